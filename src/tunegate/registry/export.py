"""Export of a trained adapter: the adapter folder, a merged Hugging Face model, or a tar.gz stream.

Owns turning an adapter folder into something other tools load: a copy of the PEFT folder, a
merged model folder that plain transformers loads and generates with, and a streamed archive for
the download endpoint. Does not own who may download what (the API layer checks ownership) nor
mapping model names to folders (jobs/ and serve/).
"""

from __future__ import annotations

import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from tunegate.registry.store import ADAPTER_FILES, base_model_path, is_adapter_dir, load_adapter_model
from tunegate.train.checkpoints import META, TRAINER_STATE

_BLOCK = 512


def _require_adapter(adapter_dir: Path) -> Path:
    from tunegate.errors import NotFoundError

    adapter_dir = Path(adapter_dir)
    if not is_adapter_dir(adapter_dir):
        raise NotFoundError(
            f"No PEFT adapter at {adapter_dir} (expected {', '.join(ADAPTER_FILES)}).", code="model_not_found"
        )
    return adapter_dir


def _public_files(adapter_dir: Path) -> list[Path]:
    # The optimizer state of a checkpoint is private to resuming and several times the adapter's size.
    return sorted(p for p in adapter_dir.iterdir() if p.is_file() and p.name != TRAINER_STATE)


def export_adapter(adapter_dir: Path, out: Path) -> Path:
    """Copy the PEFT adapter (+ meta.json) to `out`; loadable with `PeftModel.from_pretrained`."""
    adapter_dir, out = _require_adapter(adapter_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in _public_files(adapter_dir):
        shutil.copy2(p, out / p.name)
    return out


def export_merged(adapter_dir: Path, base_path: str | Path | None, out: Path) -> Path:
    """Merge the LoRA weights into the base model and save a plain HF model folder with its tokenizer."""
    from transformers import AutoTokenizer

    adapter_dir, out = _require_adapter(adapter_dir), Path(out)
    base_path = str(base_path or base_model_path(adapter_dir))
    model = load_adapter_model(adapter_dir, base_path).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(str(out))
    if (adapter_dir / META).exists():  # provenance: which config and data made these weights
        shutil.copy2(adapter_dir / META, out / "tunegate_meta.json")
    return out


def archive_adapter(adapter_dir: Path, arcname: str | None = None, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """A tar.gz of the adapter folder, produced piece by piece (memory stays ~chunk_size).

    Tar headers come from `tarfile`; the stream itself is written here because tarfile can only
    write to a file object, which would hold each member whole before a chunk could be sent.
    """
    adapter_dir = _require_adapter(adapter_dir)
    prefix = arcname or adapter_dir.name
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    written = 0

    def emit(data: bytes) -> bytes:
        nonlocal written
        written += len(data)
        return gz.compress(data)

    for path in _public_files(adapter_dir):
        info = tarfile.TarInfo(f"{prefix}/{path.name}")
        st = path.stat()
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
        if chunk := emit(info.tobuf(format=tarfile.PAX_FORMAT)):
            yield chunk
        with open(path, "rb") as f:
            while data := f.read(chunk_size):
                if chunk := emit(data):
                    yield chunk
        if (pad := (-st.st_size) % _BLOCK) and (chunk := emit(b"\0" * pad)):
            yield chunk
    # End of archive: two zero blocks, padded to tar's 10 KiB record size.
    end = b"\0" * (2 * _BLOCK)
    end += b"\0" * ((-(written + len(end))) % tarfile.RECORDSIZE)
    yield emit(end) + gz.flush()
