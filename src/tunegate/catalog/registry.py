"""The named registry of base models and their metadata (path, context length, template hash)."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tunegate.catalog.convert import SMOLLM2_DIST, SMOLLM2_GGUF, SMOLLM2_PACKAGE, convert_gguf, package_dir
from tunegate.errors import NotFoundError
from tunegate.settings import Settings

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    path: Path
    context_length: int
    chat_template: str
    template_sha256: str
    created: int


def list_base_models(settings: Settings) -> list[str]:
    return [DEFAULT_MODEL, *sorted(n for n in settings.base_models if n != DEFAULT_MODEL)]


def resolve_path(name: str, settings: Settings) -> Path:
    """The HF folder of base model `name`, converting the packaged GGUF on first use."""
    if name in settings.base_models:
        path = Path(settings.base_models[name])
        if not (path / "config.json").exists():
            raise NotFoundError(
                f"Base model `{name}` is registered at {path}, but that folder has no config.json. "
                "Point TUNEGATE_BASE_MODELS at a Hugging Face model folder.",
                param="model",
                code="model_not_found",
            )
        return path
    if name == DEFAULT_MODEL:
        return convert_gguf(package_dir(SMOLLM2_PACKAGE, SMOLLM2_DIST), SMOLLM2_GGUF, settings.models_dir / name)
    raise NotFoundError(
        f"The model `{name}` does not exist. Base models: {', '.join(list_base_models(settings))}.",
        param="model",
        code="model_not_found",
    )


def get_base_model(name: str, settings: Settings) -> BaseModelInfo:
    path = str(resolve_path(name, settings))
    with _LOAD_LOCK:
        return _info(name, path)


@lru_cache(maxsize=16)
def _info(name: str, path: str) -> BaseModelInfo:
    folder = Path(path)
    config = json.loads((folder / "config.json").read_text())
    tok = _load_tokenizer(str(folder))
    template = tok.chat_template or ""
    return BaseModelInfo(
        name=name,
        path=folder,
        context_length=int(config.get("max_position_embeddings") or 2048),
        chat_template=template,
        template_sha256=template_sha256(template),
        created=int((folder / "config.json").stat().st_mtime),
    )


_LOAD_LOCK = threading.Lock()


def load_tokenizer(path: Path | str):
    """The model's own fast tokenizer (the real one: never tiktoken). Cached per folder."""
    # transformers' lazy module imports are not thread-safe: two first loads at once can fail.
    with _LOAD_LOCK:
        return _load_tokenizer(str(path))


@lru_cache(maxsize=16)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def template_sha256(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()
