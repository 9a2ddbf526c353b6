"""Request dependencies shared by every router: settings, database, the authenticated principal,
and the logging of unknown request fields (accepted, so newer SDKs keep working)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel

from tunegate.auth import Principal, authenticate
from tunegate.db import Database
from tunegate.errors import PermissionDeniedError
from tunegate.settings import Settings

log = logging.getLogger("tunegate.api")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_principal(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)  # the guard authenticated before reading the body
    if principal is None:
        principal = authenticate(request.app.state.db, request.headers.get("authorization"))
        request.state.principal = principal
    return principal


def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise PermissionDeniedError("This action needs an admin API key (`tunegate keys create --org NAME --admin`).",
                                    code="admin_required")
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]


def log_unknown_fields(body: BaseModel, where: str) -> None:
    extra = getattr(body, "model_extra", None)
    if extra:
        log.info("ignoring unknown fields on %s: %s", where, sorted(extra))


def resolve_model(request: Request, principal: Principal, model: str):
    """The servable model `model` for this caller: `ResolvedModel(id, base: BaseModelInfo,
    adapter_path: Path | None, owned_by, created, kind, job_id)`; 404 `model_not_found` otherwise
    (unknown, another organisation's, or blocked by the safety gate)."""
    from tunegate.models.service import resolve

    return resolve(request.app.state.db, request.app.state.settings, principal, model)
