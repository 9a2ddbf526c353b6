"""Admin routes for base models: register a local Hugging Face folder and see what it supports.

`POST /v1/admin/base_models` {"name", "path"} checks the folder (catalog/local.py) and registers
it; `GET /v1/admin/base_models` lists every base model with its template features. Our extension;
the server reads the folder from its own filesystem, and base models are shared by every
organisation, so both routes are for the platform operator only (an organisation admin gets 403).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from tunegate import audit
from tunegate.catalog.local import add_model
from tunegate.edge import AdminDep, DbDep, SettingsDep
from tunegate.errors import PermissionDeniedError

router = APIRouter(prefix="/v1/admin/base_models", tags=["admin"])


class AddBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    """The base model's name, used as `model` when creating jobs."""
    path: str
    """A Hugging Face causal-LM folder on the server's filesystem."""


def _operator(principal) -> None:
    if not principal.is_operator:
        raise PermissionDeniedError(
            "Base models are shared by every organisation: only the platform operator's key "
            "(the one made at first start) may list or register them.",
            code="operator_required",
        )


@router.post("")
def add_base_model(body: AddBaseModel, settings: SettingsDep, db: DbDep, principal: AdminDep):
    """Check the folder and register it; the report says what its chat template supports."""
    _operator(principal)
    report = add_model(settings, body.name, body.path)
    audit.record(
        db,
        "base_model.added",
        org_id=principal.org_id,
        actor=principal.key_id,
        object_id=body.name,
        details={"path": report["path"], "architecture": report["architecture"]},
    )
    return {"object": "base_model", **report}


@router.get("")
def list_base_models_route(settings: SettingsDep, principal: AdminDep):
    from tunegate.catalog.registry import get_base_model, list_base_models

    _operator(principal)
    data = []
    for name in list_base_models(settings):
        info = get_base_model(name, settings)
        data.append(
            {
                "object": "base_model",
                "name": name,
                "path": str(info.path),
                "context_length": info.context_length,
                "template_sha256": info.template_sha256,
                "features": info.features.to_dict() if info.features else None,
            }
        )
    return {"object": "list", "data": data}
