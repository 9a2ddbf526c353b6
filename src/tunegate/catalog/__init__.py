"""Base model catalog: names -> local Hugging Face folders, plus the tokenizer and chat-template hash.

Owns where base models come from (the packaged SmolLM2 GGUF, registered local folders) and the
one-time GGUF -> HF conversion. Does not own training or serving.
"""

from tunegate.catalog.registry import (
    DEFAULT_MODEL,
    BaseModelInfo,
    context_length,
    get_base_model,
    list_base_models,
    load_pretrained,
    load_tokenizer,
    template_sha256,
)

__all__ = [
    "DEFAULT_MODEL",
    "BaseModelInfo",
    "context_length",
    "get_base_model",
    "list_base_models",
    "load_pretrained",
    "load_tokenizer",
    "template_sha256",
]
