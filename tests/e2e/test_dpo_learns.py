"""DPO really moves the real SmolLM2-135M-Instruct: on the project's concise-answer preference task
(`samples.concise_preference_pairs`: the base model's own long greedy reply rejected, its first
sentence preferred) the held-out margin of preferred over rejected rises from zero, and the tuned
model's greedy answers to the 16 held-out prompts are short (1-20 words) far more often than the
base's, measured in the same run.

Measured on the loaded 2-core machine (36 pairs, 6 steps of 6, multiplier 10, beta 0.1; 77 s of
training, 95 s for the whole test): training margin 0.00, 0.48, 0.74, 1.23, 1.91, 2.41 after steps
1-6; held-out pairs (8, from the same run's base replies) margin 1.44, accuracy 1.00; held-out greedy
answers of 1-20 words (40 new tokens): base 3 of 16 (19%), DPO 14 of 16 (88%). A first run with 48
pairs, 6 steps of 8 and rejected answers uncut gave the same 19% -> 88% (margin 1.45) in 275 s, too
slow for CI, hence three-sentence rejected answers and batches of 6. Asserted: step 1 at the
reference, held-out margin > 1 with accuracy >= 0.9, and tuned rate >= base rate + 0.5.

What DPO taught is the style, not better answers: the short replies are often the question echoed
("How many seconds are in an hour?"), "I'm not sure." or a wrong fact ("The telephone is invented by
a man named HIGGING."), and one of the two long replies is a loop. The preferred answers are the
base's own first sentences, so nothing in the data rewards content; `is_concise` counts words only.

What failed before this task (kept so nobody retries it): the two-line "Answer:/Confidence:" form
never appeared in greedy answers, 0 of 16 held-out prompts for the base and after every DPO run tried,
although the margin rose in each (6 steps of 8 pairs reached a held-out margin of 3.14 at accuracy
1.0): those pairs at beta 0.1 and 0.02; pairs whose rejected answer was the base's own greedy reply
(the tuned model then echoed the question); form-only pairs (the base's first sentence plain vs the
same sentence in the two-line form) at learning-rate multiplier 4 (the chosen answers' implicit
reward rose to 1.08, the rejected stayed at 0, the first token stayed "The") and 10 (the first token
became "Answer:", the rest of the reply broke down). A new form at the start of a reply needs many
low-probability tokens; ending the reply after its first sentence is one token's choice at a point
every reply reaches, which DPO moved within six steps. The loss stays exactly the paper's; no supervised term."""

from __future__ import annotations

import json
import time

import pytest
import torch

from tunegate import samples
from tunegate.registry import load_adapter_model
from tunegate.train.config import TrainConfig, resolve_beta, resolve_hyperparameters
from tunegate.train.dpo import run_dpo

pytestmark = pytest.mark.e2e

DPO_HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 6, "learning_rate_multiplier": 10.0, "beta": 0.1}
N_PAIRS = 36
MAX_NEW_TOKENS = 40  # a 20-word answer is about 25 tokens; a reply still going at 40 is not short


def _greedy_replies(model, tokenizer) -> list[str]:
    prompts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in samples.held_out_prompts()
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(o[enc["input_ids"].shape[1] :], skip_special_tokens=True) for o in out]


def _rate(replies: list[str]) -> float:
    return sum(map(samples.is_concise, replies)) / len(replies)


def test_dpo_makes_greedy_answers_concise_and_raises_the_held_out_margin(smol_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    base_replies = _greedy_replies(AutoModelForCausalLM.from_pretrained(smol_path).eval(), tokenizer)
    base_rate = _rate(base_replies)

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in samples.concise_preference_pairs()[:N_PAIRS]))
    # Held-out pairs from the same run's base replies to the held-out prompts (one-sentence replies give none).
    valid_pairs = samples.concise_pairs(samples.held_out_prompts(), base_replies)
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json.dumps(p) + "\n" for p in valid_pairs))
    hp = DPO_HYPERPARAMETERS
    n_epochs, batch_size, lr = resolve_hyperparameters(
        hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"], n_examples=N_PAIRS, method="dpo"
    )
    config = TrainConfig(
        base_model="smollm2-135m-instruct",
        base_model_path=str(smol_path),
        template_sha256="",
        training_file=str(train),
        validation_file=str(valid),
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=0,
        method="dpo",
        beta=resolve_beta(hp["beta"]),
        eval_batch_size=4,
        warmup_ratio=0.0,
    )
    events: list[dict] = []
    trained = time.monotonic()
    result = run_dpo(config, tmp_path / "run", events.append, lambda: None)
    assert result.status == "succeeded"
    trained = time.monotonic() - trained

    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    tuned_replies = _greedy_replies(load_adapter_model(result.adapter_dir), tokenizer)
    tuned_rate = _rate(tuned_replies)
    full = metrics[-1]
    print(
        "\n"
        + "\n".join(
            f"step {m['step']}: loss {m['train_loss']:.3f} margin {m['train_rewards_margin']:.3f} "
            f"valid margin {m['valid_rewards_margin']:.3f} acc {m['valid_rewards_accuracy']:.2f}"
            for m in metrics
        )
        + f"\nheld-out pairs: margin {full['full_valid_rewards_margin']:.3f}, accuracy "
        f"{full['full_valid_rewards_accuracy']:.2f} ({len(valid_pairs)} pairs)"
        + f"\nheld-out greedy answers of 1-{samples.CONCISE_MAX_WORDS} words: base {base_rate:.0%}, DPO {tuned_rate:.0%}"
        + f"\ntraining {trained:.0f} s, whole test {time.monotonic() - started:.0f} s\n"
        + "\n".join(
            f"{len(b.split()):3d} -> {len(t.split()):3d} words: {t!r}" for b, t in zip(base_replies, tuned_replies)
        )
    )
    assert metrics[0]["train_rewards_margin"] == pytest.approx(0, abs=1e-4)  # step 1 starts at the reference
    assert full["full_valid_rewards_margin"] > 1.0 and full["full_valid_rewards_accuracy"] >= 0.9
    assert tuned_rate >= base_rate + 0.5, tuned_replies
