"""Adapters and checkpoints on disk: standard PEFT folders plus meta.json, written atomically.

Layout of one training run (`out_dir`, owned by the job):

    checkpoints/step-N/   adapter_config.json, adapter_model.safetensors, meta.json, trainer_state.pt
    adapter/              adapter_config.json, adapter_model.safetensors, meta.json
    results.csv

A folder appears under its final name only when complete (written beside it, then renamed), so a
worker killed mid-save never leaves a half checkpoint. Owns saving, listing, pruning and loading
these folders. Does not own what goes into trainer_state.pt (the recipe's resume state) nor
which database rows point at them (jobs/).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tunegate.errors import NotFoundError

META = "meta.json"
TRAINER_STATE = "trainer_state.pt"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def save_adapter(model, out: Path, meta: dict[str, Any], trainer_state: dict[str, Any] | None = None) -> Path:
    """Write the PEFT adapter of `model` (+ meta.json, + resume state for checkpoints) to `out`."""
    import torch

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    if out.exists():  # a re-run after a crash writes the same folder again
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def is_adapter_dir(path: Path) -> bool:
    path = Path(path)
    return all((path / f).exists() for f in ADAPTER_FILES)


def read_meta(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / META
    if not path.exists():
        raise NotFoundError(f"No adapter at {adapter_dir} (meta.json is missing).", code="model_not_found")
    return json.loads(path.read_text())


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


def base_model_path(adapter_dir: Path) -> str:
    """The base model folder this adapter was trained on (meta.json, else PEFT's own record)."""
    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / META
    if meta_path.exists():
        path = json.loads(meta_path.read_text()).get("config", {}).get("base_model_path")
        if path:
            return path
    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_adapter_model(adapter_dir: Path, base_path: str | Path | None = None, *, device: str = "cpu",
                       dtype=None, attn_implementation: str | None = None):
    """Base model + adapter, ready for generation (eval mode), with plain transformers and PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not is_adapter_dir(adapter_dir):
        raise NotFoundError(f"No PEFT adapter at {adapter_dir}.", code="model_not_found")
    base = AutoModelForCausalLM.from_pretrained(
        str(base_path or base_model_path(adapter_dir)), dtype=dtype or torch.float32,
        attn_implementation=attn_implementation)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return model.to(device).eval()
