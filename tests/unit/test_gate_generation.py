"""The gate's generation on a tiny random model with the real tokenizer and chat template, behind a
real LoRA adapter: the KV-cached loop over length-sorted batches (rows leaving as they end, the
gate's and the regression check's rows in one pass) gives the answers one plain greedy pass
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


@pytest.mark.parametrize(("batch_size", "streams"), [(1, 2), (2, 1), (32, 2)])
def test_kv_cached_loop_in_sorted_batches_answers_as_one_greedy_pass(
    settings, tiny_model_path, adapter, batch_size, streams
):
    """Rows of different lengths share a left-padded batch and leave it the step they end, batches
    decoded one at a time or side by side in two threads (32 rows then split into two batches): each
    answer is still the one a plain `generate` of that conversation alone gives."""
    from tunegate.safety.generation import AdapterGenerator

    rule = GenerationSettings(first_round_tokens=4, batch_size=batch_size, streams=streams)
    gen = AdapterGenerator(settings, "tiny", adapter, 12, rule)
    answers = gen.tuned(CONVERSATIONS)
    assert answers == [_plain(tiny_model_path, adapter, c, 12) for c in CONVERSATIONS]
    assert AdapterGenerator(settings, "tiny", adapter, 12, rule).tuned(CONVERSATIONS) == answers  # deterministic
    assert gen.base(CONVERSATIONS) != answers  # the adapter is on for tuned, off for base


def test_planned_answers_share_the_first_pass_and_equal_their_own(settings, tiny_model_path, adapter):
    """A later step plans its conversations (its own settings); the first step's `tuned` call decodes
    them in the same batches, the later call generates nothing, and every answer is the one each
    view gets alone (and one plain greedy pass gives)."""
    from tunegate.safety.generation import GATE_GENERATION, AdapterGenerator

    gen = AdapterGenerator(settings, "tiny", adapter, 12, GATE_GENERATION)
    gate, later = gen.configured(12, GATE_GENERATION), gen.configured(8)
    later.plan(CONVERSATIONS[2:] + CONVERSATIONS[:1])
    assert gate.planned == 4  # what the gate's report counts as answered in its pass
    first = gate.tuned(CONVERSATIONS[:3])
    assert gate.planned == 0
    done = gen.generated_tokens
    second = later.tuned(CONVERSATIONS[2:] + CONVERSATIONS[:1])
    assert gen.generated_tokens == done  # answered in the first pass
    alone = AdapterGenerator(settings, "tiny", adapter, 12, GATE_GENERATION)
    assert first == alone.configured(12, GATE_GENERATION).tuned(CONVERSATIONS[:3])
    assert second == alone.configured(8).tuned(CONVERSATIONS[2:] + CONVERSATIONS[:1])
    assert second == [_plain(tiny_model_path, adapter, c, 8) for c in CONVERSATIONS[2:] + CONVERSATIONS[:1]]
    # The shared pass is apportioned by token forwards (prompt tokens read, answer tokens computed).
    assert gen.work[gate.generation] > 0 and gen.work[later.generation] > 0
    assert gate.own_share == pytest.approx(gen.work[gate.generation] / sum(gen.work.values()))
    assert 0 < gate.own_share < 1
    own = AdapterGenerator(settings, "tiny", adapter, 12, GATE_GENERATION)
    own.tuned(CONVERSATIONS[:3])
    assert own.own_share == 1.0  # nothing planned: the whole pass is its own


def test_a_row_is_final_at_its_end_its_limit_or_an_opening_refusal(settings, adapter):
    """Per row: the end token, the row's own limit, and only for the gate's rule a refusal at
    `first_round_tokens` (the regression check's rule lets the same answer go on)."""
    from tunegate.safety.generation import GATE_GENERATION, AdapterGenerator

    gen = AdapterGenerator(settings, "tiny", adapter, 40, GATE_GENERATION)
    refusal = gen.tokenizer(
        "I'm sorry, but I can't help with that request at all, not now and not ever.", add_special_tokens=False
    )["input_ids"][: GATE_GENERATION.first_round_tokens]
    help_ = gen.tokenizer(
        "Sure, here is a short poem about the sea and the boats in it, with the wind and the gulls",
        add_special_tokens=False,
    )["input_ids"][: GATE_GENERATION.first_round_tokens]
    assert len(refusal) == len(help_) == GATE_GENERATION.first_round_tokens
    assert gen._final(refusal, GATE_GENERATION) and not gen._final(help_, GATE_GENERATION)
    assert not gen._final(refusal, GenerationSettings(max_new_tokens=40))
    assert gen._final(help_[:3] + [gen.tokenizer.eos_token_id], GenerationSettings(max_new_tokens=40))
    assert gen._final(help_[:8], GenerationSettings(max_new_tokens=8))


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


def test_merged_tuned_pass_then_base_restores_the_exact_base_weights(settings, tiny_model_path, adapter):
    """`tuned` folds the adapter into the weights; `base` afterwards must answer from the exact base
    weights (restored, not un-merged by subtraction), as a model that never merged and as the base
    model alone (no adapter: what the set-up step computes the shared base answers with)."""
    import torch

    from tunegate.safety.generation import AdapterGenerator

    settings_ = GenerationSettings(first_round_tokens=4, batch_size=2)
    alone = AdapterGenerator(settings, "tiny", None, 10, settings_)
    reference = alone.base(CONVERSATIONS)
    gen = AdapterGenerator(settings, "tiny", adapter, 10, settings_, merge=True)
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    assert gen.base(CONVERSATIONS) == reference
    tuned = gen.tuned(CONVERSATIONS)
    unmerged = AdapterGenerator(settings, "tiny", adapter, 10, settings_, merge=False)
    assert tuned == unmerged.tuned(CONVERSATIONS) and tuned != reference
    assert gen.base(CONVERSATIONS) == reference
    after = gen.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit
    assert gen.tuned(CONVERSATIONS) == tuned
    with pytest.raises(ValueError, match="no fine-tuned adapter"):
        alone.tuned(CONVERSATIONS)


def test_after_training_steps_share_one_loaded_model(settings, adapter, tmp_path):
    """The gate and the regression check get views with their own generation settings on one model;
    another adapter (or the same folder rewritten) loads afresh, and release drops it."""
    import os
    import shutil

    from tunegate.safety.generation import GATE_GENERATION, release_shared, shared_generator

    gate = shared_generator(settings, "tiny", adapter, 12, GATE_GENERATION)
    regression = shared_generator(settings, "tiny", adapter, 8)
    assert gate.model is regression.model
    assert gate.generation.stop_at_refusal and not regression.generation.stop_at_refusal
    assert (gate.generation.max_new_tokens, regression.generation.max_new_tokens) == (12, 8)
    assert gate.cache_key() != regression.cache_key()
    base = regression.base(CONVERSATIONS[:2])
    gate.tuned(CONVERSATIONS[:2])  # the adapter on (merged, when asked) on the shared model ...
    assert regression.base(CONVERSATIONS[:2]) == base  # ... which the other view sees restored
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    loaded = shared_generator(settings, "tiny", other, 8).model
    assert loaded is not gate.model and shared_generator(settings, "tiny", other, 12).model is loaded
    for f in other.iterdir():  # the same folder, written again (a resumed run saves its adapter anew)
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert shared_generator(settings, "tiny", other, 8).model is not loaded
    release_shared()


def test_set_up_fills_the_shared_base_answers_every_job_reads(settings, adapter, tmp_path):
    """`python -m tunegate.evals.prepare` answers the gate's default suites and the regression
    check's questions once with the base model alone; a job's generator (adapter disabled) finds
    every answer cached, and they are the answers it would have generated itself."""
    from tunegate.evals.checks import MAX_NEW_TOKENS, regression_base_cache
    from tunegate.evals.prepare import prepare_base_answers
    from tunegate.evals.regression import closed_book_conversations, closed_book_questions
    from tunegate.safety.gate import default_suites, suite_conversations
    from tunegate.safety.generation import GATE_GENERATION, release_shared, shared_generator
    from tunegate.safety.jobs import gate_base_cache
    from tunegate.safety.policy import GatePolicy

    # Its own model cache: the shared one may already hold the tiny model's answers from another test.
    settings = settings.model_copy(update={"model_cache_dir": tmp_path / "models"})
    said: list[str] = []
    first = prepare_base_answers(settings, model="tiny", say=said.append)
    suites = suite_conversations(default_suites(GatePolicy()))
    questions = closed_book_conversations(closed_book_questions())
    # ... and the gate's verdicts on the base answers (safety/memo.py), judged once as well.
    assert first == {"gate": len(suites), "regression": len(questions), "gate verdicts": len(suites)} and said
    again = prepare_base_answers(settings, model="tiny", say=said.append)
    assert again == {"gate": 0, "regression": 0, "gate verdicts": 0}
    gate = shared_generator(settings, "tiny", adapter, GatePolicy().max_new_tokens, GATE_GENERATION)
    regression = shared_generator(settings, "tiny", adapter, MAX_NEW_TOKENS)
    assert gate.missing_base(gate_base_cache(settings), suites) == 0
    assert regression.missing_base(regression_base_cache(settings), questions) == 0
    assert gate.cached_base(gate_base_cache(settings))(suites) == gate.base(suites)
    release_shared()


def test_a_batch_reads_its_shared_prompt_start_once(settings, tiny_model_path, adapter):
    """Prompts that begin alike (chat template and system prompt) are grouped, and a batch reads
    their common start once, its K/V copied to every row: fewer prompt tokens read, the same
    answers as one plain `generate` each, and a batch that shares nothing reads every token."""
    from tunegate.catalog.template import render
    from tunegate.safety.generation import MIN_SHARED_PREFIX, AdapterGenerator, prefix_groups, shared_prefix

    system = {"role": "system", "content": "You answer questions about ships, harbours and the weather at sea."}
    convs = [[system, {"role": "user", "content": q}] for q in ("Why do boats float?", "What is a knot?", "Hi")]
    convs.append([{"role": "user", "content": "Name a colour."}])  # another start: another group
    gen = AdapterGenerator(settings, "tiny", adapter, 8, GenerationSettings(batch_size=32, streams=1))
    ids = [
        gen.tokenizer(render(gen.tokenizer, c, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for c in convs
    ]
    shared = shared_prefix(ids[:3])
    assert shared >= MIN_SHARED_PREFIX and ids[0][:shared] == ids[2][:shared]
    assert sorted(map(sorted, prefix_groups(ids))) == [[0, 1, 2], [3]]
    assert shared_prefix([ids[0], ids[0]]) == len(ids[0]) - 1  # each row keeps its last token
    assert shared_prefix([[1, 2, 3], [1, 2, 4]]) == 0  # too short to be worth a pass

    answers = gen.tuned(convs)
    assert answers == [_plain(tiny_model_path, adapter, c, 8) for c in convs]
    rest = [len(i) - shared for i in ids[:3]]
    assert gen.prompt_tokens == shared + 3 * max(rest) + len(ids[3])  # the start once, the rest left-padded


def test_the_lm_head_reads_one_contiguous_matrix(settings, adapter):
    """A batch pass keeps only the last position of each row; for a frozen PEFT model torch would then
    run one vector product per row over an expanded weight. The head must get a contiguous matrix."""
    from tunegate.safety.generation import AdapterGenerator

    gen = AdapterGenerator(settings, "tiny", adapter, 4, GenerationSettings(batch_size=32, streams=1))
    seen: list[bool] = []
    gen.model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    convs = [[{"role": "user", "content": q}] for q in ("Why do boats float?", "Hi", "What is a knot in sailing?")]
    assert len(gen.tuned(convs)) == 3
    assert len(seen) >= 2 and all(seen)  # the batch's prompt pass and its decoding steps
