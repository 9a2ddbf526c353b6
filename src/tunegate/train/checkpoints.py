"""A training run's checkpoints on disk: how the trainer saves, lists and prunes them.

Layout of one run (`out_dir`, owned by the job):

    checkpoints/step-N/   adapter_config.json, adapter_model.safetensors, meta.json, trainer_state.pt
    adapter/              adapter_config.json, adapter_model.safetensors, meta.json
    results.csv

A folder appears under its final name only when complete (written beside it, then renamed), so a
worker killed mid-save never leaves a half checkpoint. Folders are standard PEFT adapters, so
registry/ (which reads and exports them), HF and vLLM load them directly. Does not own what goes
into trainer_state.pt (the recipes' resume state) nor the database rows that name the folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

META = "meta.json"
MANIFEST = "sha256.json"
TRAINER_STATE = "trainer_state.pt"


def save_adapter(model, out: Path, meta: dict[str, Any], trainer_state: dict[str, Any] | None = None) -> Path:
    """Write the PEFT adapter of `model` (+ meta.json, + resume state for checkpoints) to `out`."""
    import torch

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # Only the trained adapter: a frozen reference adapter (DPO/RFT from a parent) is not part of the result.
    model.save_pretrained(str(tmp), safe_serialization=True, selected_adapters=["default"])
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    write_manifest(tmp)
    if out.exists():  # a re-run after a crash writes the same folder again
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file in `folder` (checked by registry's `verify_adapter`)."""
    folder = Path(folder)
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps(files, indent=2, sort_keys=True))


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    found = []
    for d in (Path(run_dir) / "checkpoints").glob("step-*"):
        step = d.name.removeprefix("step-")
        if step.isdigit() and (d / META).exists():
            found.append((int(step), d))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = [d for _, d in list_checkpoints(run_dir) if (d / TRAINER_STATE).exists()]
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for _, d in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
    for stale in (Path(run_dir) / "checkpoints").glob(".step-*.tmp-*"):  # left by a killed worker
        shutil.rmtree(stale, ignore_errors=True)


def write_checkpoint(
    model: Any, run_dir: Path, step: int, epoch: int, meta: dict[str, Any], trainer_state: dict[str, Any], keep: int
) -> dict[str, Any]:
    """Save the step's checkpoint, prune to the newest `keep`, and return the `checkpoint` event's
    data: step, epoch, path, metrics and `kept_steps` (the checkpoints left on disk)."""
    path = save_adapter(model, Path(run_dir) / "checkpoints" / f"step-{step}", meta, trainer_state)
    prune_checkpoints(run_dir, keep)
    return {
        "step": step,
        "epoch": epoch,
        "path": str(path),
        "metrics": dict(meta.get("metrics") or {}),
        "kept_steps": [s for s, _ in list_checkpoints(run_dir)],
    }
