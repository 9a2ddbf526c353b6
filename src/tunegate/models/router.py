"""`/v1/models` routes: list, retrieve, delete (like OpenAI's), and download an adapter (ours)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from tunegate.edge import DbDep, PrincipalDep, SettingsDep
from tunegate.files.service import content_disposition
from tunegate.models import lineage, service  # noqa: F401 - lineage registers continued fine-tuning with jobs

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
def list_models(db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    from tunegate.models.permissions import shared_models

    return {
        "object": "list",
        "data": service.list_models(db, settings, principal) + shared_models(db, settings, principal),
    }


@router.get("/{model:path}/content")
def download_model(model: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    """The adapter (PEFT format + meta.json) as a .tar.gz stream, for its owner."""
    from tunegate.errors import InvalidRequestError, PermissionDeniedError
    from tunegate.registry import archive_adapter

    m = service.resolve(db, settings, principal, model)
    if m.kind == "shared-checkpoint":  # shared for use, not for taking away
        raise PermissionDeniedError(
            f"`{model}` is shared with your project for use only; its owner can download it.",
            param="model",
            code="download_not_permitted",
        )
    if m.adapter_path is None:
        raise InvalidRequestError(
            f"`{model}` is a base model; only fine-tuned adapters can be downloaded here.", param="model"
        )
    return StreamingResponse(
        archive_adapter(m.adapter_path),
        media_type="application/gzip",
        headers={"Content-Disposition": content_disposition(model.replace(":", "_") + ".tar.gz")},
    )


@router.get("/{model:path}")
def retrieve_model(model: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    m = service.resolve(db, settings, principal, model, verify=False)
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}


@router.delete("/{model:path}")
def delete_model(model: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    service.delete(db, settings, principal, model)
    return {"id": model, "object": "model", "deleted": True}
