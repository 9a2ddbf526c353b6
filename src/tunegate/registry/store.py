"""Adapters and checkpoints on disk: standard PEFT folders plus meta.json, written atomically.

Layout of one training run (`out_dir`, owned by the job):

    checkpoints/step-N/   adapter_config.json, adapter_model.safetensors, meta.json, trainer_state.pt
    adapter/              adapter_config.json, adapter_model.safetensors, meta.json
    results.csv

The trainer writes these folders (train/checkpoints.py: atomic saves with a `sha256.json` manifest
of every file's size and sha256, listing, pruning); this module reads them: an adapter's meta.json,
its base model, loading it onto the base for generation, and `verify_adapter`, which refuses a
folder whose bytes changed (truncated, corrupted) before it is served or downloaded. Does not own
which database rows point at them (jobs/).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tunegate.errors import ConflictError, NotFoundError
from tunegate.train.checkpoints import MANIFEST, META, sha256_file

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


_verified: dict[str, tuple] = {}  # folder -> the (name, size, mtime) it had when its hashes last matched
_verified_lock = threading.Lock()


def verify_adapter(folder: Path) -> None:
    """Raise `adapter_corrupted` (409) when the adapter's files are missing or differ from the
    manifest written with them. Hashes are re-computed only when a file's size or mtime changed."""
    folder = Path(folder)

    def corrupted(why: str) -> ConflictError:
        return ConflictError(
            f"The stored adapter is damaged ({why}); it is not served. Restore it from a backup or re-run the job.",
            param="model",
            code="adapter_corrupted",
        )

    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise corrupted(f"missing {', '.join(missing)}")
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():  # written before manifests existed: at least the weights must parse
        try:
            from safetensors import safe_open

            with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
                for name in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                    f.get_slice(name)
        except Exception as exc:
            raise corrupted(f"unreadable weights: {type(exc).__name__}") from None
        return
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        raise corrupted("unreadable sha256.json") from None
    stats = []
    for name, want in sorted(manifest.items()):
        try:
            st = (folder / name).stat()
        except OSError:
            raise corrupted(f"missing {name}") from None
        if st.st_size != want.get("bytes"):
            raise corrupted(f"{name} is {st.st_size} bytes, {want.get('bytes')} were written")
        stats.append((name, st.st_size, st.st_mtime_ns))
    key = str(folder.resolve())
    with _verified_lock:
        if _verified.get(key) == tuple(stats):
            return
    for name, want in sorted(manifest.items()):
        if sha256_file(folder / name) != want.get("sha256"):
            raise corrupted(f"{name} does not match its sha256")
    with _verified_lock:
        _verified[key] = tuple(stats)


def is_adapter_dir(path: Path) -> bool:
    path = Path(path)
    return all((path / f).exists() for f in ADAPTER_FILES)


def read_meta(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / META
    if not path.exists():
        raise NotFoundError(f"No adapter at {adapter_dir} (meta.json is missing).", code="model_not_found")
    return json.loads(path.read_text())


def base_model_path(adapter_dir: Path) -> str:
    """The base model folder this adapter was trained on (meta.json, else PEFT's own record)."""
    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / META
    if meta_path.exists():
        path = json.loads(meta_path.read_text()).get("config", {}).get("base_model_path")
        if path:
            return path
    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_adapter_model(
    adapter_dir: Path,
    base_path: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype=None,
    attn_implementation: str | None = None,
):
    """Base model + adapter, ready for generation (eval mode), with plain transformers and PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not is_adapter_dir(adapter_dir):
        raise NotFoundError(f"No PEFT adapter at {adapter_dir}.", code="model_not_found")
    base = AutoModelForCausalLM.from_pretrained(
        str(base_path or base_model_path(adapter_dir)),
        dtype=dtype or torch.float32,
        attn_implementation=attn_implementation,
    )
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return model.to(device).eval()
