"""Data-parallel training (torch.distributed, gloo on CPU) on a tiny random model: 2 ranks x half
the batch train the same run as 1 rank x the whole batch (loss curve and final adapter within
floating-point tolerance), checkpoints are written once, and a run resumes with another world size.
One 2-rank run through `torchrun` checks the command-line launcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.test_train_recipe import _config, _losses, _run, _write_data
from tunegate.train.distributed import run_data_parallel


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp-data")
    return _write_data(root / "train.jsonl", 16), _write_data(root / "valid.jsonl", 4, offset=100)


def _dp_config(tiny_model_path, data, **kw):
    # No dropout: its masks depend on which rank sees which example, so only then are runs identical.
    return _config(tiny_model_path, data, **({"batch_size": 8, "lora_dropout": 0.0, "n_epochs": 2} | kw))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path, data):
    """The one-process run every data-parallel run must reproduce."""
    return _run(_dp_config(tiny_model_path, data), tmp_path_factory.mktemp("dp-ref") / "one")


def _dp_run(config, out: Path, world_size: int, stop_at: tuple[int, str] | None = None):
    events: list[dict] = []

    def should_stop():
        steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
        return stop_at[1] if stop_at and steps and steps[-1] == stop_at[0] else None

    result = run_data_parallel(config, out, events.append, should_stop, world_size=world_size, threads=1)
    return result, events


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def _assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=k)
    # and training moved the weights (B starts at zero), so the comparison is not vacuous
    assert any(wa[k].abs().sum() > 0 for k in wa if "lora_B" in k)


def test_two_ranks_equal_one_rank_and_checkpoint_once(tmp_path, tiny_model_path, data, reference):
    config = _dp_config(tiny_model_path, data)
    one, one_events = reference
    two, two_events = _dp_run(config, tmp_path / "two", world_size=2)
    assert one.status == two.status == "succeeded"
    assert len(_losses(one_events)) == len(_losses(two_events)) == 4  # 16 examples / batch 8 x 2 epochs
    assert _losses(two_events) == pytest.approx(_losses(one_events), rel=1e-5)
    valid = lambda ev: [e["data"]["valid_loss"] for e in ev if e["type"] == "metrics"]  # noqa: E731
    assert valid(two_events) == pytest.approx(valid(one_events), rel=1e-5)
    tokens = lambda ev: [e["data"]["trained_tokens"] for e in ev if e["type"] == "metrics"]  # noqa: E731
    assert tokens(two_events) == tokens(one_events)  # statistics summed over both ranks
    _assert_same_adapter(one.adapter_dir, two.adapter_dir)
    # Checkpoints: one per epoch, each announced once (rank 0 alone writes)
    saved = [e for e in two_events if "Checkpoint saved" in e["message"]]
    assert len(saved) == 2
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert two.metrics["gradient_sync_seconds"] > 0


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_resume_with_another_world_size(tmp_path, tiny_model_path, data, reference, first, second):
    config = _dp_config(tiny_model_path, data)
    out = tmp_path / "run"
    paused, _ = _dp_run(config, out, world_size=first, stop_at=(2, "pause"))
    assert paused.status == "paused"
    resumed, events = _dp_run(config, out, world_size=second)
    assert resumed.status == "succeeded"
    assert any("Resuming from the checkpoint at step 2" in e["message"] for e in events)
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == [3, 4]  # no step trained twice
    _assert_same_adapter(reference[0].adapter_dir, resumed.adapter_dir)


def test_torchrun_launcher(tmp_path, tiny_model_path, data):
    config = _dp_config(tiny_model_path, data, n_epochs=1)
    reference, ref_events = _run(config, tmp_path / "ref")
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "tunegate.train.distributed",
            str(tmp_path / "config.json"),
            str(tmp_path / "dp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert _losses(events) == pytest.approx(_losses(ref_events), rel=1e-5)
    assert events[-1]["type"] == "result" and events[-1]["status"] == "succeeded"
    _assert_same_adapter(reference.adapter_dir, tmp_path / "dp" / "adapter")
