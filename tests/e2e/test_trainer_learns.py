"""The trainer really teaches the real SmolLM2-135M-Instruct a behaviour: the project's demo
dataset ("Answer: ..." + "Confidence: high|medium|low") on held-out prompts, base vs fine-tuned."""

from __future__ import annotations

import pytest
import torch

from tunegate import samples
from tunegate.registry import load_adapter_model
from tunegate.train.config import TrainConfig, resolve_hyperparameters
from tunegate.train.recipe import run_training

pytestmark = pytest.mark.e2e


def _replies(model, tokenizer) -> list[str]:
    prompts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in samples.held_out_prompts()
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(o[enc["input_ids"].shape[1] :], skip_special_tokens=True) for o in out]


def _rate(replies: list[str]) -> float:
    return sum(map(samples.follows_format, replies)) / len(replies)


def test_fine_tuned_model_follows_the_taught_format_far_more_often_than_the_base(smol_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    base_rate = _rate(_replies(AutoModelForCausalLM.from_pretrained(smol_path).eval(), tokenizer))

    hp = samples.DEMO_HYPERPARAMETERS
    n_examples = len(samples.path("demo_train").read_text().splitlines())
    n_epochs, batch_size, lr = resolve_hyperparameters(
        hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"], n_examples=n_examples
    )
    config = TrainConfig(
        base_model="smollm2-135m-instruct",
        base_model_path=str(smol_path),
        template_sha256="",
        training_file=str(samples.path("demo_train")),
        validation_file=str(samples.path("demo_valid")),
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=0,
    )
    events: list[dict] = []
    result = run_training(config, tmp_path / "run", events.append, lambda: None)
    assert result.status == "succeeded"

    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    full_valid = [m["full_valid_loss"] for m in metrics if "full_valid_loss" in m]
    assert len(full_valid) == n_epochs and full_valid[-1] <= full_valid[0]
    # Most of the fall happens in the first epoch (measured: 3.8 -> ~1.0 validation, ~0.3 training).
    assert full_valid[-1] < 0.5 * metrics[0]["valid_loss"]
    assert sum(m["train_loss"] for m in metrics[-3:]) < 0.5 * sum(m["train_loss"] for m in metrics[:3])

    replies = _replies(load_adapter_model(result.adapter_dir), tokenizer)
    tuned_rate = _rate(replies)
    print(f"\nheld-out prompts following the format: base {base_rate:.0%}, fine-tuned {tuned_rate:.0%}")
    assert tuned_rate >= 0.75 and tuned_rate - base_rate >= 0.5, replies
