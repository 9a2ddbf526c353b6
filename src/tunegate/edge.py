"""The HTTP edge every stage router stands on: request dependencies (settings, database, the
authenticated principal, admin keys), the logging of unknown request fields (accepted, so newer
SDKs keep working) and OpenAI's list envelope.

Part of the shared core, so a stage's router needs nothing from api/ (the app factory, which
imports the routers) and nothing from another stage. Owns no routes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel

from tunegate.auth import Principal, authenticate
from tunegate.db import Database
from tunegate.errors import PermissionDeniedError
from tunegate.settings import Settings

log = logging.getLogger("tunegate.api")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_principal(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)  # the guard authenticated before reading the body
    if principal is None:
        principal = authenticate(request.app.state.db, request.headers.get("authorization"))
        request.state.principal = principal
    return principal


def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise PermissionDeniedError(
            "This action needs an admin API key (`tunegate keys create --org NAME --admin`).", code="admin_required"
        )
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]


def log_unknown_fields(body: BaseModel, where: str) -> None:
    extra = getattr(body, "model_extra", None)
    if extra:
        log.info("ignoring unknown fields on %s: %s", where, sorted(extra))


def page(items: list[Any], limit: int, id_of: Callable[[Any], str] = lambda x: x.id) -> dict[str, Any]:
    """OpenAI's list envelope for a query that fetched `limit + 1` rows: the extra row only tells `has_more`."""
    has_more = len(items) > limit
    items = items[:limit]
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": id_of(items[0]) if items else None,
        "last_id": id_of(items[-1]) if items else None,
    }
