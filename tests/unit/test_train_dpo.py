"""The DPO recipe on a tiny random model: the loss against a direct computation of the paper's formula,
the adapter-off reference against the plain base model, metrics and results, resume after a crash, and
from an `ft:` parent the parent as reference."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from tunegate.registry import list_checkpoints, read_meta
from tunegate.train.config import TrainConfig
from tunegate.train.dpo import DPO_RESULT_COLUMNS, load_pairs, pair_loss, run_dpo
from tunegate.train.lora import build_model, choose_precision

COLOURS = ["red", "green", "blue", "amber", "violet"]


class Crash(Exception):
    pass


def write_pairs(path: Path, n: int, offset: int = 0) -> Path:
    lines = []
    for i in range(offset, offset + n):
        prompt = [{"role": "user", "content": f"What colour is box {i}?"}]
        if i % 3 == 0:  # multi-turn prompts: the earlier assistant turn is context, never scored
            prompt = [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Hello?"},
                {"role": "assistant", "content": "Hi."},
                *prompt,
            ]
        lines.append(
            json.dumps(
                {
                    "input": {"messages": prompt},
                    "preferred_output": [{"role": "assistant", "content": f"Box {i} is {COLOURS[i % 5]}."}],
                    "non_preferred_output": [
                        {"role": "assistant", "content": f"Hmm, maybe box {i} is something, who knows"}
                    ],
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(tmp_path / "valid.jsonl", 4, offset=100)


def _config(tiny_model_path, data, **kw) -> TrainConfig:
    train, valid = data
    base = dict(
        base_model="tiny",
        base_model_path=str(tiny_model_path),
        template_sha256="t" * 64,
        training_file=str(train),
        validation_file=str(valid),
        n_epochs=2,
        batch_size=4,
        learning_rate=5e-3,
        seed=3,
        num_threads=1,
        method="dpo",
        beta=0.5,
    )
    return TrainConfig(**(base | kw))


def _run(config, out: Path, crash_at: int | None = None):
    events: list[dict] = []

    def on_event(event):
        events.append(event)
        if crash_at is not None and event["type"] == "metrics" and event["data"]["step"] == crash_at:
            raise Crash()

    return run_dpo(config, out, on_event, lambda: None), events


def _perturb_adapter(model, seed: int) -> None:
    """Random LoRA B matrices (they start at zero), so the adapter really changes the model."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def _direct_logp(model, example) -> float:
    """log p(answer | prompt) the textbook way: one unpacked forward, full log-softmax, float64 sum."""
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits, -1)
    return sum(
        float(logps[p - 1, example.input_ids[p]]) for p in range(1, len(example.input_ids)) if example.loss_mask[p]
    )


def test_loss_is_the_papers_formula_and_the_reference_is_the_plain_base(tiny_model_path, data, tokenizer):
    from transformers import AutoModelForCausalLM

    config = _config(tiny_model_path, data, lora_dropout=0.0)
    precision = choose_precision(config)
    model = build_model(config, precision)
    _perturb_adapter(model, seed=0)  # a policy that differs from the reference (LoRA B starts at zero)
    model.eval()
    pairs = load_pairs(config.training_file, tokenizer, 2048).examples[:3]
    loss_sum, stats = pair_loss(model, pairs, config.beta, precision)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    expected, chosen_rewards, rejected_rewards = [], [], []
    for pair in pairs:
        pw, pl = _direct_logp(model, pair.chosen), _direct_logp(model, pair.rejected)
        rw, rl = _direct_logp(base, pair.chosen), _direct_logp(base, pair.rejected)
        z = config.beta * ((pw - rw) - (pl - rl))
        expected.append(-math.log(1 / (1 + math.exp(-z))))
        chosen_rewards.append(config.beta * (pw - rw))
        rejected_rewards.append(config.beta * (pl - rl))
    assert abs(sum(chosen_rewards)) > 1e-3  # the policy really differs from the reference
    assert float(loss_sum.detach()) == pytest.approx(sum(expected), rel=1e-4, abs=1e-5)
    assert stats.loss_sum == pytest.approx(sum(expected), rel=1e-4, abs=1e-5)
    assert stats.chosen_sum == pytest.approx(sum(chosen_rewards), rel=1e-3, abs=1e-4)
    assert stats.rejected_sum == pytest.approx(sum(rejected_rewards), rel=1e-3, abs=1e-4)
    assert stats.correct == sum(c > r for c, r in zip(chosen_rewards, rejected_rewards))
    # Gradients reach the adapter only: the reference pass is not part of the graph.
    loss_sum.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_reference_is_computed_once_and_the_policy_pass_is_the_fused_forward(tiny_model_path, data, tokenizer):
    """The reference log-probs attached before training equal a per-step reference pass, whatever the
    grouping; the policy pass takes the fused forward and scores exactly what PEFT's forward scores."""
    from tunegate.train.dpo import attach_reference, sequence_logps

    config = _config(tiny_model_path, data, lora_dropout=0.0)
    precision = choose_precision(config)
    model = build_model(config, precision)
    assert model.tunegate_fused is not None
    _perturb_adapter(model, seed=0)
    model.eval()
    pairs = load_pairs(config.training_file, tokenizer, 2048).examples[:5]
    per_step, per_step_stats = pair_loss(model, pairs, config.beta, precision)
    attach_reference(model, pairs, precision, token_budget=64)  # several small passes
    assert all(p.reference is not None for p in pairs)
    cached, cached_stats = pair_loss(model, pairs, config.beta, precision)
    assert float(cached.detach()) == pytest.approx(float(per_step.detach()), rel=1e-5, abs=1e-6)
    assert cached_stats.chosen_sum == pytest.approx(per_step_stats.chosen_sum, rel=1e-4, abs=1e-5)

    examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    fused = sequence_logps(model, examples, precision, policy=True)
    peft = sequence_logps(model, examples, precision)
    torch.testing.assert_close(fused.detach(), peft.detach(), rtol=1e-4, atol=1e-4)


def test_only_the_answer_is_scored(tiny_model_path, data, tokenizer):
    pairs = load_pairs(data[0], tokenizer, 2048).examples
    multi = pairs[0]  # line 0 has a system prompt and an earlier assistant turn
    text = tokenizer.decode([t for t, m in zip(multi.chosen.input_ids, multi.chosen.loss_mask) if m])
    assert text.startswith("Box 0 is red.") and "Hi." not in text
    assert multi.chosen.input_ids[: text_prefix_len(multi)] == multi.rejected.input_ids[: text_prefix_len(multi)]


def text_prefix_len(pair) -> int:
    return pair.chosen.loss_mask.index(1)


def test_run_emits_dpo_metrics_results_and_checkpoints_and_learns_the_preference(tmp_path, tiny_model_path, data):
    result, events = _run(_config(tiny_model_path, data, n_epochs=3, keep_checkpoints=2), tmp_path / "run")
    assert result.status == "succeeded"
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 13)) and metrics[0]["total_steps"] == 12
    assert any("Reference log-probabilities of 20 pairs computed once" in e.get("message", "") for e in events)
    keys = {
        "train_loss",
        "train_rewards_chosen",
        "train_rewards_rejected",
        "train_rewards_margin",
        "train_rewards_accuracy",
        "valid_loss",
        "valid_rewards_margin",
        "valid_rewards_accuracy",
    }
    assert all(keys <= m.keys() for m in metrics)
    # Step 1 starts at the reference: loss log 2, zero margin (the adapter's B starts at zero).
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics[0]["train_rewards_margin"] == pytest.approx(0, abs=1e-4)
    full = [m for m in metrics if "full_valid_loss" in m]
    assert [m["step"] for m in full] == [4, 8, 12]
    # Held-out pairs: the margin of chosen over rejected rises and the preferred answer wins.
    assert full[-1]["full_valid_rewards_margin"] > full[0]["full_valid_rewards_margin"] > 0
    assert full[-1]["full_valid_rewards_accuracy"] == 1.0
    assert metrics[-1]["train_loss"] < 0.5 * math.log(2)

    assert [s for s, _, _ in result.checkpoints] == [8, 12]
    meta = read_meta(result.adapter_dir)
    assert meta["config"]["method"] == "dpo" and meta["config"]["beta"] == 0.5
    assert meta["n_train_examples"] == 16
    with open(tmp_path / "run" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == DPO_RESULT_COLUMNS and [int(r["step"]) for r in rows] == list(range(1, 13))
    assert float(rows[-1]["train_rewards_margin"]) == pytest.approx(metrics[-1]["train_rewards_margin"], rel=1e-5)


def test_micro_batch_split_does_not_change_training(tmp_path, tiny_model_path, data):
    def losses(events):
        return [e["data"]["train_loss"] for e in events if e["type"] == "metrics"]

    from tunegate.train.recipe import run_training

    whole: list[dict] = []  # through the trainer's one entry point, which hands DPO configs to run_dpo
    run_training(
        _config(tiny_model_path, data, n_epochs=1, lora_dropout=0.0), tmp_path / "a", whole.append, lambda: None
    )
    with open(tmp_path / "a" / "results.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == DPO_RESULT_COLUMNS
    whole = losses(whole)
    split = losses(
        _run(_config(tiny_model_path, data, n_epochs=1, lora_dropout=0.0, micro_batch_tokens=60), tmp_path / "b")[1]
    )
    assert split == pytest.approx(whole, rel=1e-4)


def test_crash_then_resume_matches_a_straight_run(tmp_path, tiny_model_path, data):
    config = _config(tiny_model_path, data, lora_dropout=0.2)
    _, straight = _run(config, tmp_path / "straight")
    with pytest.raises(Crash):
        _run(config, tmp_path / "crashed", crash_at=6)
    assert [s for s, _ in list_checkpoints(tmp_path / "crashed")] == [4]
    resumed, events = _run(config, tmp_path / "crashed")
    assert resumed.status == "succeeded" and any("Resuming" in e["message"] for e in events)

    def curve(evts):
        return [
            v
            for e in evts
            if e["type"] == "metrics"
            for v in (e["data"]["step"], e["data"]["train_loss"], e["data"]["valid_rewards_margin"])
        ]

    # Same weights, optimizer moments, schedule, data order and dropout stream: the same curve.
    assert curve(events) == pytest.approx(curve(straight)[12:], rel=1e-6)
    with open(tmp_path / "crashed" / "results.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 9))


def test_checkpoints_of_another_beta_are_not_resumed(tmp_path, tiny_model_path, data):
    from tunegate.errors import InvalidRequestError

    _run(_config(tiny_model_path, data, n_epochs=1), tmp_path / "run")
    with pytest.raises(InvalidRequestError) as err:
        _run(_config(tiny_model_path, data, n_epochs=1, beta=0.2), tmp_path / "run")
    assert err.value.param == "beta"


def test_beta_and_method_are_checked():
    from tunegate.errors import InvalidRequestError
    from tunegate.train.config import resolve_beta, resolve_hyperparameters

    assert resolve_beta("auto") == 0.1 and resolve_beta(0.3) == 0.3
    with pytest.raises(InvalidRequestError) as err:
        resolve_beta(0)
    assert err.value.param == "method.dpo.hyperparameters.beta"
    with pytest.raises(InvalidRequestError) as err:
        resolve_hyperparameters(batch_size=0, n_examples=100, method="dpo")
    assert err.value.param == "method.dpo.hyperparameters.batch_size"
    _, _, lr = resolve_hyperparameters(learning_rate_multiplier=1, n_examples=100, method="dpo")
    assert lr == 5e-5


def test_concise_pairs_prefer_the_first_sentence_of_a_long_reply():
    from tunegate import samples

    prompts = samples.prompt_messages("demo_train")[:3]
    replies = [
        "The capital of France is Paris. It is a large city with many museums. It has",
        "Eight.",  # one sentence already: no pair
        "A spider has eight legs!\nThey are arachnids. They spin webs. Most are harmless.",  # cut at three
    ]
    pairs = samples.concise_pairs(prompts, replies)
    assert [(p["preferred_output"][0]["content"], p["non_preferred_output"][0]["content"]) for p in pairs] == [
        ("The capital of France is Paris.", "The capital of France is Paris. It is a large city with many museums."),
        ("A spider has eight legs!", "A spider has eight legs!\nThey are arachnids. They spin webs."),
    ]
    assert pairs[1]["input"]["messages"] == prompts[2]
    shipped = samples.concise_preference_pairs()
    assert len(shipped) == 72 and all(
        p["non_preferred_output"][0]["content"].startswith(p["preferred_output"][0]["content"]) for p in shipped
    )
    assert samples.is_concise("Paris.") and not samples.is_concise("") and not samples.is_concise("word " * 21)


def test_from_a_parent_the_reference_is_the_parent_and_training_starts_at_it(
    tmp_path, tiny_model_path, data, tokenizer
):
    """DPO from an `ft:` parent: the reference log-probs are the parent model's (not the base's), the
    trained adapter starts as the parent's copy (step 1 at loss log 2, zero margin), gradients reach
    only the trained adapter, and the result is one adapter like any other."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunegate.registry import load_adapter_model
    from tunegate.train.checkpoints import save_adapter
    from tunegate.train.dpo import sequence_logps
    from tunegate.train.lora import REFERENCE_ADAPTER, load_reference_adapter, reference_policy

    config = _config(tiny_model_path, data, lora_dropout=0.0, n_epochs=1)
    precision = choose_precision(config)
    parent = build_model(config, precision)
    _perturb_adapter(parent, seed=1)  # a parent that differs from the base
    parent_dir = save_adapter(parent, tmp_path / "parent", {"kind": "adapter"})

    child_config = _config(tiny_model_path, data, lora_dropout=0.0, n_epochs=1, init_adapter=str(parent_dir))
    model = build_model(child_config, precision)
    load_reference_adapter(model, parent_dir)
    pairs = load_pairs(config.training_file, tokenizer, 2048).examples[:3]
    examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    with torch.no_grad(), reference_policy(model):
        ref = sequence_logps(model, examples, precision).tolist()
    parent_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), str(parent_dir)
    ).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    assert ref == pytest.approx([_direct_logp(parent_model, e) for e in examples], rel=1e-4, abs=1e-4)
    assert max(abs(r - _direct_logp(base, e)) for r, e in zip(ref, examples)) > 1e-2  # not the base's

    # Policy == reference at the start: loss log 2 per pair, zero rewards; only the trained adapter learns.
    model.train()
    loss_sum, stats = pair_loss(model, pairs, child_config.beta, precision)
    assert float(loss_sum.detach()) == pytest.approx(3 * math.log(2), abs=1e-4)
    assert stats.chosen_sum == pytest.approx(0, abs=1e-4) and stats.rejected_sum == pytest.approx(0, abs=1e-4)
    loss_sum.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if f".{REFERENCE_ADAPTER}." not in n)
    assert all(g is None for n, g in grads.items() if f".{REFERENCE_ADAPTER}." in n)

    result, events = _run(child_config, tmp_path / "run")
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics[0]["train_rewards_margin"] == pytest.approx(0, abs=1e-4)
    assert metrics[-1]["train_rewards_margin"] > 0
    assert any("the reference is the parent model" in e.get("message", "") for e in events)
    # The result holds the trained adapter only, and serves like any adapter.
    assert not (result.adapter_dir / REFERENCE_ADAPTER).exists()
    tuned = load_adapter_model(result.adapter_dir)
    assert _direct_logp(tuned, pairs[0].chosen) != pytest.approx(_direct_logp(parent_model, pairs[0].chosen), abs=1e-4)
