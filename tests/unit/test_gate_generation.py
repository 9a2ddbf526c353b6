"""The gate's generation on a tiny random model with the real tokenizer and chat template, behind a
real LoRA adapter: two rounds and length-sorted batches give the answers one plain greedy pass
gives, answers are deterministic, and base answers are cached on disk by base model, generation
settings and conversations."""

from __future__ import annotations

import pytest

from tunegate.safety.generation import GenerationSettings

CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Write one long sentence about the sea, the wind and the boats in the harbour."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is two plus two?"}],
    [{"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "Tell me about trains and why people like them so much."}],
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_path):
    """A LoRA adapter with random (non-zero) weights, so the tuned model answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def _plain(tiny_model_path, adapter_dir, conversation, max_new):
    """One conversation, one greedy `generate` call, no padding: the reference answer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunegate.catalog.template import render

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(adapter_dir)).eval()
    enc = tok(render(tok, conversation, add_generation_prompt=True), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ids = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_two_rounds_in_sorted_batches_answer_as_one_greedy_pass(settings, tiny_model_path, adapter):
    from tunegate.safety.generation import AdapterGenerator

    gen = AdapterGenerator(settings, "tiny", adapter, 12, GenerationSettings(first_round_tokens=4, batch_size=2))
    answers = gen.tuned(CONVERSATIONS)
    assert answers == [_plain(tiny_model_path, adapter, c, 12) for c in CONVERSATIONS]
    assert gen.tuned(CONVERSATIONS) == answers  # deterministic
    assert gen.base(CONVERSATIONS) != answers  # the adapter is on for tuned, off for base


def test_base_answers_are_cached_by_model_settings_and_conversation(settings, adapter, tmp_path):
    from tunegate.safety.generation import AdapterGenerator

    gen = AdapterGenerator(settings, "tiny", adapter, 8, GenerationSettings(first_round_tokens=4))
    cache = tmp_path / "cache"
    first = gen.cached_base(cache)(CONVERSATIONS[:3])
    (folder,) = cache.iterdir()
    assert folder.name == gen.cache_key() and len(list(folder.iterdir())) == 3
    assert first == gen.base(CONVERSATIONS[:3])
    (folder / f"{gen.cache_key([CONVERSATIONS[0]])}.json").write_text('"from the cache"')
    # Cached conversations are read, not generated; new ones are generated and added.
    again = gen.cached_base(cache)(CONVERSATIONS)
    assert again[0] == "from the cache" and again[1:3] == first[1:3] and len(list(folder.iterdir())) == 5
    other = AdapterGenerator(settings, "tiny", adapter, 8, GenerationSettings(first_round_tokens=2))
    assert other.cache_key() != gen.cache_key()  # generation settings are part of the key
    same = AdapterGenerator(settings, "tiny", adapter, 8, GenerationSettings(first_round_tokens=4))
    assert same.cache_key() == gen.cache_key() and same.cache_key(CONVERSATIONS[:1]) != gen.cache_key(
        CONVERSATIONS[1:2]
    )


def test_gate_decisions_are_deterministic_for_a_given_model(settings, adapter, tmp_path):
    """The whole gate on a real (tiny) model twice — first with an empty base-answer cache, then
    with it filled, each time with a freshly loaded model: the same answers, tests and decision."""
    from tunegate.safety.gate import run_gate
    from tunegate.safety.generation import GATE_GENERATION, AdapterGenerator
    from tunegate.safety.moderation import get_moderator
    from tunegate.safety.policy import GatePolicy

    policy = GatePolicy(n_harmful=8, n_benign=4, n_encoded=4, max_new_tokens=12)
    moderator = get_moderator(settings)
    reports = []
    for _ in range(2):
        gen = AdapterGenerator(settings, "tiny", adapter, policy.max_new_tokens, GATE_GENERATION)
        reports.append(run_gate(gen.cached_base(tmp_path / "cache"), gen.tuned, moderator, policy, encoding_shift=3))
    first, second = (r.model_dump(exclude={"timings"}) for r in reports)
    assert first == second
    assert len(first["samples"]) == 8 + 4 + 4 and any(s["tuned"]["answer"] for s in first["samples"])


@pytest.mark.parametrize(
    "opening",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot assist with",
        "As an AI language model, I cannot provide",
        "That is illegal and I won't",
    ],
)
def test_stopping_at_a_refusal_changes_no_verdict(opening):
    """The gate stops an answer that opens with a refusal: sound only while a refusal stays a refusal
    whatever follows (the refusal detector only adds evidence as text grows)."""
    from tunegate.safety.refusal import refusal_score

    assert refusal_score(opening).refused
    for rest in (" However, here is how: step 1, buy the parts. Step 2, build it.", " Sure! " * 20, "\n\n1. First"):
        assert refusal_score(opening + rest).refused
