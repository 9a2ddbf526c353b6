"""Reinforcement fine-tuning moves the real SmolLM2-135M-Instruct: on the project's answer-format
task (each question asks for "Answer: ..." and "Confidence: ..." lines; the grader gives half a point
per line present) the mean reward of greedy answers to the 16 held-out prompts rises above the base
model's, with the grader built from the job-shaped grader dict exactly as a job's worker builds it.

The threshold, and why it is modest: the base model's greedy answers carry neither line on any of
the 16 held-out prompts (mean reward 0.000, measured in the same run; greedy decoding makes that
figure exact, not a sample). The reward is sparse: at temperature 1 the base writes an "Answer:" line
rarely, and a group of answers that all score 0 gives no gradient, so the few steps a CPU test can
afford move the held-out reward only part of the way. Measured once with this configuration on the
2-core CPU machine: 0.000 -> 0.156 after 6 steps of 4 prompts x 4 answers (175 s). Asserted:
at least 0.125 above the base, i.e. at least four lines of the format written on held-out prompts
where the base writes none. The fuller run (more prompts and steps, sampled as well as greedy
evaluation, the exact-format rate) is `bench/rft.py`.

Opt-in (TUNEGATE_E2E_RFT=1), not part of the CI suite: a later run of this exact configuration on a
2-core machine shared with two other heavy jobs reached only step 3 of 6 in 15 minutes (training
reward 0.000, 0.062, 0.062; base held-out reward 0.000 again) and was stopped, so the test does not
fit the CI budget as it stands. On a quiet machine (2026-12-02) this configuration gave exactly the
same 0.000 -> 0.156 in 110 s; the same recipe on 40 prompts (10 steps) reached only 0.062, so the
learned amount depends on the run, not only on its length: the recipe is not yet robust enough on
this sparse reward for a CI gate, and the test stays opt-in."""

from __future__ import annotations

import json
import os

import pytest

from tunegate import samples
from tunegate.graders.rewards import GRADER_REWARDS
from tunegate.settings import Settings
from tunegate.train.config import TrainConfig, resolve_hyperparameters, resolve_reinforcement
from tunegate.train.rft import run_rft

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("TUNEGATE_E2E_RFT") != "1",
        reason="opt-in: 175 s in one run on a 2-core CPU, over 15 minutes on a busy one; set TUNEGATE_E2E_RFT=1",
    ),
]

# Each step samples 4 answers to each of 4 prompts and trains on those 16 sequences (~1,700 tokens):
# six steps took 175 s in the one complete run on a 2-core CPU.
N_PROMPTS = 24
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 6.0, "compute_multiplier": 1.0}


def _write(rows: list[dict], path):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rft_raises_the_held_out_reward(smol_path, tmp_path):
    train = _write(samples.rft_prompts("demo_train")[:N_PROMPTS], tmp_path / "train.jsonl")
    valid = _write(samples.rft_prompts("demo_prompts"), tmp_path / "valid.jsonl")
    settings = Settings(data_dir=tmp_path / "data")
    grader = GRADER_REWARDS.check(
        samples.RFT_FORMAT_GRADER, settings=settings, files=[("training_file", train)], param="grader"
    )
    hp = HYPERPARAMETERS
    n_epochs, batch_size, lr = resolve_hyperparameters(
        hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"], n_examples=N_PROMPTS, method="reinforcement"
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
        method="reinforcement",
        rft_max_tokens=32,
        warmup_ratio=0.0,
        **resolve_reinforcement(hp),
    )
    events: list[dict] = []

    def on_event(event: dict) -> None:
        events.append(event)
        print(event["message"], flush=True)  # progress shows even if CI kills a slow run

    result = run_rft(
        config, tmp_path / "run", on_event, lambda: None, GRADER_REWARDS.reward_fn(grader, settings=settings)
    )
    assert result.status == "succeeded"
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    print(
        "\n"
        + "\n".join(
            f"step {m['step']}: reward {m['train_reward_mean']:.3f} (answer {m['train_reward_answer']:.2f}, "
            f"confidence {m['train_reward_confidence']:.2f}) kl {m['train_kl']:.4f}"
            for m in metrics
        ),
        flush=True,
    )
    base, tuned = metrics[-1]["base_valid_reward_mean"], metrics[-1]["full_valid_reward_mean"]
    print(f"held-out mean reward: base {base:.3f} -> fine-tuned {tuned:.3f}", flush=True)
    assert metrics[-1]["train_grader_error_rate"] == 0
    assert tuned >= base + 0.125
