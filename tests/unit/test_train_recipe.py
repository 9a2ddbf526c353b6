"""The training recipe on a tiny random model: metrics events, checkpoints and results, seed
determinism, micro-batching, resume after a crash, cancel and pause."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tunegate.registry import list_checkpoints, read_meta
from tunegate.train.config import TrainConfig
from tunegate.train.recipe import run_training

METRIC_FIELDS = {
    "step",
    "total_steps",
    "epoch",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "trained_tokens",
}


class Crash(Exception):
    pass


def _write_data(path: Path, n: int, offset: int = 0) -> Path:
    colours = ["red", "green", "blue", "amber", "violet"]
    lines = []
    for i in range(offset, offset + n):
        msgs = [
            {"role": "user", "content": f"What colour is box {i}?"},
            {"role": "assistant", "content": f"Box {i} is {colours[i % 5]}."},
        ]
        if i % 4 == 0:  # some multi-turn examples with an excluded first answer
            msgs = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi.", "weight": 0}, *msgs]
        lines.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def data(tmp_path):
    return _write_data(tmp_path / "train.jsonl", 24), _write_data(tmp_path / "valid.jsonl", 6, offset=100)


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
        learning_rate=2e-3,
        seed=7,
        num_threads=1,
    )
    return TrainConfig(**(base | kw))


def _run(config, out: Path, stop_at: tuple[int, str] | None = None, crash_at: int | None = None):
    events: list[dict] = []

    def on_event(event):
        events.append(event)
        if crash_at is not None and event["type"] == "metrics" and event["data"]["step"] == crash_at:
            raise Crash()

    def should_stop():
        steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
        return stop_at[1] if stop_at and steps and steps[-1] == stop_at[0] else None

    result = run_training(config, out, on_event, should_stop)
    return result, events


def _losses(events) -> list[float]:
    return [e["data"]["train_loss"] for e in events if e["type"] == "metrics"]


def test_run_emits_metrics_saves_checkpoints_results_and_adapter(tmp_path, tiny_model_path, data):
    result, events = _run(_config(tiny_model_path, data, n_epochs=3, keep_checkpoints=2), tmp_path / "run")
    assert result.status == "succeeded"
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 19)) and metrics[0]["total_steps"] == 18
    assert all(m.keys() >= METRIC_FIELDS for m in metrics)
    epoch_ends = [m["step"] for m in metrics if "full_valid_loss" in m]
    assert epoch_ends == [6, 12, 18] and all(
        "full_valid_mean_token_accuracy" in m for m in metrics if "full_valid_loss" in m
    )
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["trained_tokens"] == result.trained_tokens > 0

    # Last 2 epoch checkpoints kept, each a complete PEFT folder with the metrics of its step.
    assert [s for s, _, _ in result.checkpoints] == [12, 18]
    # Each save is a typed event naming the checkpoint and the ones still kept after pruning.
    saved = [e["data"] for e in events if e["type"] == "checkpoint"]
    assert [(c["step"], c["epoch"], c["kept_steps"]) for c in saved] == [
        (6, 1, [6]),
        (12, 2, [6, 12]),
        (18, 3, [12, 18]),
    ]
    assert saved[-1]["path"] == str(result.checkpoints[-1][1]) and saved[-1]["metrics"]["step"] == 18
    for step, path, ck_metrics in result.checkpoints:
        assert (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists()
        assert ck_metrics["step"] == step and "full_valid_loss" in ck_metrics
    meta = read_meta(result.adapter_dir)
    assert meta["config"]["n_epochs"] == 3 and meta["config"]["max_seq_len"] == 2048  # resolved: context length
    assert meta["template_sha256"] == "t" * 64 and len(meta["training_file_sha256"]) == 64
    assert (
        meta["metrics"]["train_loss"] == metrics[-1]["train_loss"] and meta["trained_tokens"] == result.trained_tokens
    )

    with open(tmp_path / "run" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r["step"]) for r in rows] == list(range(1, 19))
    assert float(rows[-1]["train_loss"]) == pytest.approx(metrics[-1]["train_loss"], rel=1e-5)


def test_checkpoint_loads_with_plain_peft(tmp_path, tiny_model_path, data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, _ = _run(_config(tiny_model_path, data, n_epochs=1), tmp_path / "run")
    _, path, _ = result.checkpoints[-1]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(path))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained weights, not the zero init


def test_same_seed_same_loss_curve_other_seed_other_curve(tmp_path, tiny_model_path, data):
    a = _losses(_run(_config(tiny_model_path, data), tmp_path / "a")[1])
    b = _losses(_run(_config(tiny_model_path, data), tmp_path / "b")[1])
    c = _losses(_run(_config(tiny_model_path, data, seed=8), tmp_path / "c")[1])
    assert a == b
    assert a != c


def test_micro_batch_split_does_not_change_training(tmp_path, tiny_model_path, data):
    whole = _losses(_run(_config(tiny_model_path, data, lora_dropout=0.0), tmp_path / "a")[1])
    split = _losses(_run(_config(tiny_model_path, data, lora_dropout=0.0, micro_batch_tokens=40), tmp_path / "b")[1])
    assert split == pytest.approx(whole, rel=1e-4)


def test_crash_then_resume_matches_a_straight_run(tmp_path, tiny_model_path, data):
    config = _config(tiny_model_path, data, lora_dropout=0.2)
    straight, straight_events = _run(config, tmp_path / "straight")

    with pytest.raises(Crash):  # dies two steps into epoch 2, after the epoch-1 checkpoint
        _run(config, tmp_path / "crashed", crash_at=8)
    assert [s for s, _ in list_checkpoints(tmp_path / "crashed")] == [6]
    resumed, resumed_events = _run(config, tmp_path / "crashed")

    assert resumed.status == "succeeded"
    assert any("Resuming" in e["message"] for e in resumed_events)
    assert [e["data"]["step"] for e in resumed_events if e["type"] == "metrics"] == list(range(7, 13))
    # Same weights, optimizer moments, schedule, data order and dropout stream: the same curve.
    assert _losses(resumed_events) == pytest.approx(_losses(straight_events)[6:], rel=1e-6)
    assert resumed.metrics["full_valid_loss"] == pytest.approx(straight.metrics["full_valid_loss"], rel=1e-6)
    assert resumed.trained_tokens == straight.trained_tokens
    with open(tmp_path / "crashed" / "results.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 13))  # no duplicated steps


def test_cancel_stops_after_the_current_optimizer_step(tmp_path, tiny_model_path, data):
    result, events = _run(_config(tiny_model_path, data), tmp_path / "run", stop_at=(3, "cancel"))
    assert result.status == "cancelled" and result.adapter_dir is None
    assert max(e["data"]["step"] for e in events if e["type"] == "metrics") == 3
    assert not (tmp_path / "run" / "adapter").exists()


def test_pause_saves_a_checkpoint_and_resume_finishes_the_same_run(tmp_path, tiny_model_path, data):
    config = _config(tiny_model_path, data)
    straight, _ = _run(config, tmp_path / "straight")
    paused, _ = _run(config, tmp_path / "run", stop_at=(3, "pause"))
    assert paused.status == "paused" and [s for s, _, _ in paused.checkpoints] == [3]
    resumed, events = _run(config, tmp_path / "run")
    assert resumed.status == "succeeded"
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"][0] == 4
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-4)
    final = torch.load(tmp_path / "run" / "checkpoints" / "step-12" / "trainer_state.pt", weights_only=True)
    assert final["step"] == 12


def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path, tiny_model_path, data):
    from tunegate.errors import InvalidRequestError

    _run(_config(tiny_model_path, data, n_epochs=1), tmp_path / "run")
    with pytest.raises(InvalidRequestError) as err:
        _run(_config(tiny_model_path, data, n_epochs=1, learning_rate=1e-4), tmp_path / "run")
    assert err.value.param == "learning_rate"


def test_continued_fine_tuning_starts_from_the_parent_adapter(tmp_path, tiny_model_path, data):
    parent, parent_events = _run(_config(tiny_model_path, data, n_epochs=3), tmp_path / "parent")
    child_cfg = _config(
        tiny_model_path, data, n_epochs=1, init_adapter=str(parent.adapter_dir), parent_model="ft:tiny:org:parent:1"
    )
    child, child_events = _run(child_cfg, tmp_path / "child")
    fresh, fresh_events = _run(_config(tiny_model_path, data, n_epochs=1), tmp_path / "fresh")
    # The child starts where the parent ended (its first loss is near the parent's last), far below a fresh start.
    start, fresh_start, parent_end = _losses(child_events)[0], _losses(fresh_events)[0], _losses(parent_events)[-1]
    assert parent_end < fresh_start - 0.2
    assert abs(start - parent_end) < 0.5 * (fresh_start - parent_end), (start, fresh_start, parent_end)
    meta = read_meta(child.adapter_dir)
    assert meta["config"]["parent_model"] == "ft:tiny:org:parent:1"
    assert meta["config"]["init_adapter"] == str(parent.adapter_dir)
