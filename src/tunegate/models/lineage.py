"""Continued fine-tuning: `fine_tuning.jobs.create(model="ft:...")` from a fine-tuned model or
checkpoint the caller owns.

Owns turning a parent model into the new job's base model and training options: the parent must be
servable for its owner (the safety gate's rules in `models/service.resolve`), trained on the base
model's current chat template (`template_sha256` in its meta.json, which includes the tool
convention), and its LoRA shape (r, alpha, target modules) is reused so its weights can start the
new training. The adapter is copied beside the new job's artifacts, so deleting or pruning the parent
later cannot break the child; the parent's id is recorded in the child's meta.json (lineage).
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from tunegate.auth import Principal
from tunegate.db import Database
from tunegate.errors import InvalidRequestError, TunegateError
from tunegate.ids import new_id
from tunegate.models import service
from tunegate.registry import read_meta
from tunegate.settings import Settings

_LORA_KEYS = {"lora_r": "r", "lora_alpha": "lora_alpha", "target_modules": "target_modules"}


def continue_from(
    db: Database, settings: Settings, principal: Principal, model: str, options: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """(base model name, job options) for a job that continues training `model` (an `ft:` id)."""
    try:
        parent = service.resolve(db, settings, principal, model)
    except TunegateError as exc:
        raise InvalidRequestError(
            f"Model `{model}` cannot be fine-tuned further: {exc.message}", param="model", code="model_not_available"
        ) from None
    if parent.kind not in ("fine-tuned", "checkpoint") or parent.adapter_path is None:
        raise InvalidRequestError(
            f"Model `{model}` is shared with your project for use only; continue training "
            "from your own fine-tuned models or checkpoints.",
            param="model",
            code="model_not_available",
        )
    meta = read_meta(parent.adapter_path)
    if meta.get("template_sha256") != parent.base.template_sha256:
        raise InvalidRequestError(
            f"Model `{model}` was trained on another chat template (or tool convention) than "
            f"`{parent.base.name}` has now, so its adapter would not fit the prompts. Fine-tune "
            "the base model instead.",
            param="model",
            code="template_mismatch",
        )
    config = json.loads((parent.adapter_path / "adapter_config.json").read_text())
    lora = {ours: config[theirs] for ours, theirs in _LORA_KEYS.items() if theirs in config}
    if isinstance(lora.get("target_modules"), list):
        lora["target_modules"] = sorted(lora["target_modules"])
    for key, value in lora.items():
        asked = options.get(key)
        if asked is not None and (sorted(asked) if isinstance(asked, list) else asked) != value:
            raise InvalidRequestError(
                f"`tunegate.{key}` is {asked}, but `{model}` was trained with {value}; "
                "continued training keeps the parent's LoRA shape. Remove the option.",
                param=f"tunegate.{key}",
                code="invalid_value",
            )
    from tunegate.storage import open_storage

    storage = open_storage(settings)
    copy = storage.local(f"artifacts/parents/{new_id('parent', 8)}")
    shutil.copytree(parent.adapter_path, copy)
    storage.push(copy)  # the worker fetches it by key, on whichever node it runs
    return parent.base.name, {**options, **lora, "init_adapter": storage.key(copy), "parent_model": model}


def _register() -> None:
    from tunegate.jobs.service import register_parent_model_hook

    register_parent_model_hook(continue_from)


_register()
