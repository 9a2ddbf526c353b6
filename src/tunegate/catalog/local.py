"""Registering local Hugging Face model folders as base models, after checking what they support.

Owns `inspect_folder` (every problem of a folder at once, and a report: architecture, context
length, weights, the chat template's features) and the registration file
`data_dir/base_models.json` that `tunegate models add` and `POST /v1/admin/base_models` write
(atomically). Names from `TUNEGATE_BASE_MODELS` take precedence over this file. Does not load
weights: a folder is checked from its config, tokenizer and template only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from tunegate.errors import InvalidRequestError
from tunegate.settings import Settings

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_WEIGHTS = ("*.safetensors", "*.bin", "*.gguf")


def registry_file(settings: Settings) -> Path:
    return settings.data_dir / "base_models.json"


def registered_models(settings: Settings) -> dict[str, Path]:
    """Folders added with `tunegate models add` (name -> path)."""
    path = registry_file(settings)
    if not path.exists():
        return {}
    return {name: Path(p) for name, p in json.loads(path.read_text()).items()}


def inspect_folder(path: Path | str) -> dict[str, Any]:
    """What the folder holds and what its chat template supports; raises one error listing every problem."""
    folder = Path(path).expanduser().resolve()
    problems: list[str] = []
    warnings: list[str] = []
    config: dict[str, Any] = {}
    if not folder.is_dir():
        raise InvalidRequestError(
            f"`{path}` is not a folder. Give the path of a Hugging Face model folder "
            "(config.json, tokenizer, weights).",
            param="path",
            code="invalid_model_folder",
        )
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        problems.append("there is no config.json (save the model with `save_pretrained`)")
    except ValueError as exc:
        problems.append(f"config.json is not valid JSON ({exc})")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if config and not _is_causal_lm(architecture):
        problems.append(
            f"its architecture {architecture!r} is not a causal language model (expected e.g. "
            "LlamaForCausalLM, Qwen2ForCausalLM, Gemma2ForCausalLM)"
        )
    if not any(next(folder.glob(p), None) for p in _WEIGHTS):
        problems.append("it holds no weights (*.safetensors, *.bin or *.gguf)")
    tokenizer, features = None, None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many kinds for a broken tokenizer
        problems.append(f"its tokenizer does not load ({type(exc).__name__}: {str(exc)[:200]})")
    if tokenizer is not None:
        from tunegate.catalog.features import effective_template_sha256, template_features

        features = template_features(tokenizer)
        if not features.has_template:
            problems.append(
                "its tokenizer has no chat template (tunegate trains and serves chat models; add "
                "`chat_template.jinja` or use the model's instruct version)"
            )
        else:
            if not features.generation_prompt:
                warnings.append(
                    "The template writes no generation prompt: the prompt ends with the user's turn "
                    "(as Mistral's does)."
                )
            if features.eot_token is None:
                warnings.append(
                    "No end-of-turn token follows an assistant's content; answers are trained without "
                    "one and serving stops only at eos_token."
                )
            if features.fold_system:
                warnings.append(
                    "The template has no system role: a system message is folded into the first user "
                    "turn (system + blank line + user), and that conversion is part of the template hash."
                )
            if not features.tool_role:
                warnings.append(
                    "The template rejects `tool` messages: training lines with them fail validation "
                    "(code unsupported_role)."
                )
    if problems:
        raise InvalidRequestError(
            f"{folder} cannot be a base model: " + "; ".join(problems) + ".", param="path", code="invalid_model_folder"
        )
    context = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    template = tokenizer.chat_template or ""
    return {
        "path": str(folder),
        "architecture": architecture,
        "model_type": config.get("model_type"),
        "context_length": int(context or 2048),
        "vocab_size": config.get("vocab_size"),
        "dtype": config.get("torch_dtype") or config.get("dtype"),
        "chat_template": {
            "sha256": effective_template_sha256(template, features),
            "system_role": features.system_role,
            "system_conversion": "folded into the first user turn" if features.fold_system else None,
            "tool_role": features.tool_role,
            "tools": features.tools,
            "generation_prompt": features.generation_prompt,
            "eot_token": features.eot_token,
            "eot_token_id": features.eot_token_id,
            "content_edit": features.content_edit,
        },
        "warnings": warnings,
    }


def _is_causal_lm(architecture: str | None) -> bool:
    if not architecture:
        return False
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if architecture in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
            return True
    except ImportError:
        pass
    return architecture.endswith("ForCausalLM")


def add_model(settings: Settings, name: str, path: Path | str) -> dict[str, Any]:
    """Check the folder, then register it under `name`; returns the inspection report with the name."""
    from tunegate.catalog.registry import DEFAULT_MODEL

    if not _NAME.match(name or ""):
        raise InvalidRequestError(
            f"`{name}` is not a valid model name: use 1-64 lower-case letters, digits, `.`, `_` "
            "or `-`, starting with a letter or digit.",
            param="name",
            code="invalid_model_name",
        )
    if name == DEFAULT_MODEL or name in settings.base_models:
        raise InvalidRequestError(
            f"`{name}` is already a base model defined by the server's settings; choose another name.",
            param="name",
            code="model_exists",
        )
    report = inspect_folder(path)
    models = {k: str(v) for k, v in registered_models(settings).items()}
    models[name] = report["path"]
    target = registry_file(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".base_models.", dir=target.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(models, f, indent=2, sort_keys=True)
    os.replace(tmp, target)
    return {"name": name, **report}
