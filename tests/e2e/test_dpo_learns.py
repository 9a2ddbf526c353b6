"""DPO really moves the real SmolLM2-135M-Instruct: on the project's preference task (the two-line
"Answer:/Confidence:" reply preferred over the same answer said plainly) the held-out margin of
chosen over rejected rises from zero and the preferred answer wins on every held-out pair.

Measured on a loaded 2-core machine (6 steps of 8 pairs): held-out batch margin 0.99, 1.70, 2.27,
2.65, 2.76, 3.14 after steps 1-6, accuracy 1.0 throughout.

Not asserted, because it has not been achieved yet: greedy answers in the preferred form more often
than the base's. Measured on the 16 held-out prompts (greedy, 40 tokens), the base writes the two-line
form 0 times, and so did every DPO run tried so far, although the margin rose in each: these pairs at
beta 0.1 and 0.02; pairs whose rejected answer is the base's own greedy reply (the tuned model then
echoed the question); form-only pairs (`samples.style_pairs`: the base's first sentence plain vs the
same sentence in the two-line form) at learning-rate multiplier 4 for 5 steps of 4 pairs (the chosen
answers' implicit reward rose to 1.08, i.e. 11 nats, the rejected stayed at 0, the first token stayed
"The") and at multiplier 10 (the first token became "Answer:", the rest of the reply broke down).
The loss stays exactly the paper's; no supervised term is added to force the form."""

from __future__ import annotations

import json

import pytest

from tunegate import samples
from tunegate.train.config import TrainConfig, resolve_beta, resolve_hyperparameters
from tunegate.train.dpo import run_dpo

pytestmark = pytest.mark.e2e

# Measured: the held-out margin passes 1.5 within three steps; six steps of 8 pairs keep CI short.
DPO_HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 10.0, "beta": 0.1}
N_PAIRS = 48


def test_dpo_raises_the_held_out_margin(smol_path, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in samples.preference_pairs("demo_train")[:N_PAIRS]))
    valid = samples.write_preference_file("demo_valid", tmp_path / "valid.jsonl")
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
    result = run_dpo(config, tmp_path / "run", events.append, lambda: None)
    assert result.status == "succeeded"

    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    print(
        "\n"
        + "\n".join(
            f"step {m['step']}: loss {m['train_loss']:.3f} margin {m['train_rewards_margin']:.3f} "
            f"valid margin {m['valid_rewards_margin']:.3f} acc {m['valid_rewards_accuracy']:.2f}"
            for m in metrics
        )
    )
    assert metrics[0]["train_rewards_margin"] == pytest.approx(0, abs=1e-4)  # step 1 starts at the reference
    full = metrics[-1]
    assert full["full_valid_rewards_margin"] > 1.0 and full["full_valid_rewards_accuracy"] >= 0.9
    assert full["full_valid_loss"] < 0.5
