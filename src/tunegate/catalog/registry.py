"""The named registry of base models and their metadata (path, context length, template hash)."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.catalog.convert import SMOLLM2_DIST, SMOLLM2_GGUF, SMOLLM2_PACKAGE, convert_gguf, package_dir
from tunegate.catalog.features import TemplateFeatures, effective_template_sha256, template_features
from tunegate.errors import NotFoundError
from tunegate.settings import Settings

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    path: Path
    context_length: int
    chat_template: str
    template_sha256: str  # the template plus tunegate's conversions for it (features.effective_template_sha256)
    created: int
    features: TemplateFeatures | None = None


def _folders(settings: Settings) -> dict[str, Path]:
    """Registered folders: `tunegate models add` (data dir) overridden by TUNEGATE_BASE_MODELS."""
    from tunegate.catalog.local import registered_models

    return {**registered_models(settings), **settings.base_models}


def list_base_models(settings: Settings) -> list[str]:
    return [DEFAULT_MODEL, *sorted(n for n in _folders(settings) if n != DEFAULT_MODEL)]


def resolve_path(name: str, settings: Settings) -> Path:
    """The HF folder of base model `name`, converting the packaged GGUF on first use."""
    folders = _folders(settings)
    if name in folders:
        path = Path(folders[name])
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


# transformers' loading is not thread-safe: its lazy module imports, and from_pretrained changing
# process-wide state while it builds a model (the default dtype, init hooks), let two loads at once in
# two threads (the serving engine's per-model workers, the moderator, request threads) break each
# other. Every load in this process goes through this one lock; what is already loaded is returned
# without taking it, so requests never wait behind a model that is loading.
_LOAD_LOCK = threading.Lock()
_infos: dict[tuple[str, str], BaseModelInfo] = {}
_tokenizers: dict[str, Any] = {}


def get_base_model(name: str, settings: Settings) -> BaseModelInfo:
    key = (name, str(resolve_path(name, settings)))
    info = _infos.get(key)
    if info is None:
        with _LOAD_LOCK:
            info = _infos.get(key) or _infos.setdefault(key, _info(*key))
    return info


# A model folder whose config.json does not say its context length is read as a Llama-2-era 2,048.
FALLBACK_CONTEXT_LENGTH = 2048


def context_length(model_path: Path | str) -> int:
    """The context length of the Hugging Face model folder `model_path` (its config.json)."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or FALLBACK_CONTEXT_LENGTH)


def _info(name: str, path: str) -> BaseModelInfo:
    folder = Path(path)
    tokenizer = _tokenizer_locked(path)
    template = tokenizer.chat_template or ""
    features = template_features(tokenizer)
    return BaseModelInfo(
        name=name,
        path=folder,
        context_length=context_length(folder),
        chat_template=template,
        template_sha256=effective_template_sha256(template, features),
        created=int((folder / "config.json").stat().st_mtime),
        features=features,
    )


def load_tokenizer(path: Path | str):
    """The model's own fast tokenizer (the real one: never tiktoken). Cached per folder."""
    tok = _tokenizers.get(str(path))
    if tok is None:
        with _LOAD_LOCK:
            tok = _tokenizer_locked(str(path))
    return tok


def preload_libraries() -> None:
    """Import the transformers and PEFT names the server's threads use, once, before any thread starts.

    transformers resolves its top-level names lazily; two threads resolving them at the same time
    (the job supervisor validating a file while the moderator warms up) can fail with "cannot import
    name 'AutoTokenizer'". Resolved here first, later imports are plain lookups."""
    import peft  # noqa: F401
    import transformers

    for name in ("AutoConfig", "AutoTokenizer", "AutoModel", "AutoModelForCausalLM", "DynamicCache"):
        getattr(transformers, name)


def _tokenizer_locked(path: str):
    if path not in _tokenizers:
        from transformers import AutoTokenizer

        _tokenizers[path] = AutoTokenizer.from_pretrained(path)
    return _tokenizers[path]


def load_pretrained(cls, path: Path | str, **kwargs):
    """`cls.from_pretrained(path, **kwargs)` (any transformers class) under the loading lock above."""
    with _LOAD_LOCK:
        return cls.from_pretrained(str(path), **kwargs)


def template_sha256(template: str) -> str:
    """Of the chat template and the project's tool convention (both decide what a model was trained on)."""
    from tunegate.catalog.template import TOOL_CONVENTION

    return hashlib.sha256((template + "\n" + TOOL_CONVENTION).encode("utf-8")).hexdigest()
