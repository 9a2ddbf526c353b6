"""The reinforcement fine-tuning recipe on a tiny random model: group-normalised advantages, the KL
to the adapter-off model (zero at the start; from a parent, to the parent), metrics, checkpoints, and a
reward that rises."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tunegate.train.config import TrainConfig
from tunegate.train.rft import group_advantages, run_rft


def test_group_advantages():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    assert adv[0].tolist() == pytest.approx([1, -1, -1, 1], abs=1e-3)
    assert adv[1].tolist() == [0, 0, 0, 0]  # an all-equal group teaches nothing


def _prompts(path: Path, n: int, offset: int = 0) -> Path:
    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"Say something about {i}."}], "topic": str(i)}) + "\n"
            for i in range(offset, offset + n)
        )
    )
    return path


def test_one_grpo_update_favours_the_answer_with_the_higher_advantage(tiny_model_path, monkeypatch):
    from tunegate.train.data import Example
    from tunegate.train.lora import build_model, choose_precision, trainable_parameters
    from tunegate.train.rft import _token_logps, grpo_loss

    config = TrainConfig(
        base_model="tiny",
        base_model_path=str(tiny_model_path),
        template_sha256="",
        training_file="x",
        lora_dropout=0.0,
        seed=1,
    )
    precision = choose_precision(config)
    model = build_model(config, precision)
    prompt, good, bad = [1, 2, 3, 4], [50, 60, 70], [80, 90, 100]
    seqs = [(prompt, good), (prompt, bad)]

    def logps():
        with torch.no_grad():
            return [
                float(t.sum())
                for t in _token_logps(model, [Example(p + a, [0] * len(p) + [1] * len(a)) for p, a in seqs], precision)
            ]

    before = logps()
    loss, kl = grpo_loss(model, seqs, torch.tensor([1.0, -1.0]), 0.04, precision)
    assert kl == pytest.approx(0, abs=1e-6)  # LoRA B starts at zero: the policy is the reference
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.5)
    loss.backward()
    optimizer.step()
    after = logps()
    assert after[0] > before[0] and after[1] < before[1]
    _, kl = grpo_loss(model, seqs, torch.tensor([1.0, -1.0]), 0.04, precision)
    assert kl > 0  # moved away from the adapter-off model

    # The policy pass is the fused forward (the reference PEFT's), and both score the same.
    import tunegate.train.fused as fused

    calls = []
    real = fused.fused_token_losses
    monkeypatch.setattr(fused, "fused_token_losses", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert model.tunegate_fused is not None
    grpo_loss(model, seqs, torch.tensor([1.0, -1.0]), 0.04, precision)
    assert len(calls) == 1
    examples = [Example(p + a, [0] * len(p) + [1] * len(a)) for p, a in seqs]
    with torch.no_grad():
        by_fused = _token_logps(model, examples, precision, policy=True)
        by_peft = _token_logps(model, examples, precision)
    for f, p in zip(by_fused, by_peft):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-4)


def test_batched_sampling_gives_each_prompt_its_own_answers(tiny_model_path):
    """Prompts of different lengths left-padded into one generate call answer exactly as one by one."""
    from tunegate.catalog import load_tokenizer
    from tunegate.train.lora import build_model, choose_precision
    from tunegate.train.rft import sample

    config = TrainConfig(base_model="tiny", base_model_path=str(tiny_model_path), template_sha256="", training_file="x")
    precision = choose_precision(config)
    model = build_model(config, precision)
    tokenizer = load_tokenizer(tiny_model_path)
    prompts = [[{"role": "user", "content": text}] for text in ("Hi.", "Tell me a long story about a dragon.", "2+2?")]
    batched = sample(model, tokenizer, prompts, 1, 12, 0.0, precision.device, batch_size=16)
    alone = sample(model, tokenizer, prompts, 1, 12, 0.0, precision.device, batch_size=1)
    assert [g[0][:2] for g in batched] == [g[0][:2] for g in alone]
    assert len({len(g[0][0]) for g in batched}) == 3  # the prompt ids come back unpadded
    groups = sample(model, tokenizer, prompts, 3, 8, 1.0, precision.device)
    assert [len(g) for g in groups] == [3, 3, 3]
    assert all(a[0] == g[0][0] for g in groups for a in g)  # each group's answers belong to its own prompt
    assert model.training  # sampling leaves the model as it found it
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()  # a model without an adapter samples too
    assert [g[0][:2] for g in sample(plain, tokenizer, prompts, 1, 12, 0.0, precision.device)] == [
        g[0][:2] for g in alone
    ]


def test_rft_run_records_reward_metrics_and_checkpoints(tmp_path, tiny_model_path):
    seen_items = []

    def reward(answers, items):
        seen_items.extend(items)
        return [1.0 - min(len(a), 80) / 80 for a in answers]

    config = TrainConfig(
        base_model="tiny",
        base_model_path=str(tiny_model_path),
        template_sha256="t" * 64,
        training_file=str(_prompts(tmp_path / "train.jsonl", 4)),
        validation_file=str(_prompts(tmp_path / "valid.jsonl", 2, 100)),
        n_epochs=1,
        batch_size=2,
        learning_rate=3e-3,
        seed=0,
        num_threads=1,
        method="reinforcement",
        rft_group_size=2,
        rft_max_tokens=6,
        rft_kl_coef=0.01,
        lora_dropout=0.0,
    )
    events: list[dict] = []
    result = run_rft(config, tmp_path / "run", events.append, lambda: None, reward)
    assert result.status == "succeeded" and (result.adapter_dir / "adapter_model.safetensors").exists()
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["train_kl"] == pytest.approx(0, abs=1e-6)
    assert all(
        {"train_reward_mean", "train_reward_std", "train_kl", "completion_tokens", "base_valid_reward_mean"} <= m.keys()
        for m in metrics
    )
    assert "full_valid_reward_mean" in metrics[-1]
    assert {"topic", "messages"} <= seen_items[0].keys()  # the grader sees the whole row as `item`
    assert len(seen_items) == 2 + 2 * 2 * 2 + 2  # base eval, 2 steps x 2 prompts x 2 answers, final eval
    assert [s for s, _, _ in result.checkpoints] == [2]


def test_from_a_parent_the_kl_is_to_the_parent(tmp_path, tiny_model_path):
    """Reinforcement from an `ft:` parent: the trained adapter starts as the parent's copy and the KL is
    measured to the parent (zero at the start), not to the base (which the parent differs from)."""
    from tunegate.train.checkpoints import save_adapter
    from tunegate.train.lora import build_model, choose_precision, load_reference_adapter
    from tunegate.train.rft import grpo_loss

    config = TrainConfig(
        base_model="tiny", base_model_path=str(tiny_model_path), template_sha256="", training_file="x", lora_dropout=0.0
    )
    precision = choose_precision(config)
    parent = build_model(config, precision)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in parent.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    parent_dir = save_adapter(parent, tmp_path / "parent", {"kind": "adapter"})
    seqs = [([1, 2, 3, 4], [50, 60, 70]), ([1, 2, 3, 4], [80, 90, 100])]
    child_config = dataclasses.replace(config, init_adapter=str(parent_dir))
    child = build_model(child_config, precision)
    _, kl_to_base = grpo_loss(child, seqs, torch.tensor([1.0, -1.0]), 0.04, precision)
    load_reference_adapter(child, parent_dir)
    _, kl_to_parent = grpo_loss(child, seqs, torch.tensor([1.0, -1.0]), 0.04, precision)
    assert kl_to_base > 1e-4 and kl_to_parent == pytest.approx(0, abs=1e-6)
