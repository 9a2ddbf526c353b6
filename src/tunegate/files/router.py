"""Files API routes: `/v1/files` like OpenAI's, plus `GET /v1/files/{id}/validation` (our extension).

Also owns the files stage's start-up recovery (orphaned temp uploads, interrupted validations) and the
cap on uploads one key streams at once."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse

from tunegate.edge import DbDep, PrincipalDep, SettingsDep
from tunegate.errors import InvalidRequestError, RateLimitError
from tunegate.files import service
from tunegate.files.schemas import UPLOAD_PURPOSES, FileDeleted, FileObject
from tunegate.files.store import receive_upload, sweep_tmp
from tunegate.files.uploads import expires_at

log = logging.getLogger("tunegate.files")

router = APIRouter(prefix="/v1/files", tags=["files"])


class StartupRecovery:
    """On start: remove temp uploads left by a killed server and finish what a crash interrupted
    (validations that never completed, files whose status was never set)."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        settings, db = self.app.state.settings, self.app.state.db
        removed = await asyncio.to_thread(
            sweep_tmp, settings.files_dir / ".tmp", 2 * settings.body_idle_timeout_seconds + 60
        )
        if removed:
            log.warning("removed %d temporary upload(s) left by an interrupted server", removed)
        for file_id in await asyncio.to_thread(service.interrupted, db):
            log.warning("resuming the interrupted validation of %s", file_id)
            t = asyncio.ensure_future(asyncio.to_thread(service.validate_stored, db, settings, file_id))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()


def setup(app: FastAPI) -> None:
    app.state.services.append(StartupRecovery(app))


# Files up to this size are validated before the upload call returns; larger ones in the background.
INLINE_VALIDATION_BYTES = 8 * 1024 * 1024


@router.post(
    "",
    response_model=FileObject,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "purpose"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
                        },
                    }
                }
            },
        }
    },
)
async def upload_file(request: Request, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    # Each upload in flight holds a connection and a temp file: one key may not hold them all.
    active: dict[str, int] | None = getattr(request.app.state, "uploads_in_flight", None)
    if active is None:
        active = request.app.state.uploads_in_flight = {}
    if active.get(principal.key_id, 0) >= settings.max_uploads_per_key:
        raise RateLimitError(
            f"This API key already has {settings.max_uploads_per_key} uploads in progress "
            "(TUNEGATE_MAX_UPLOADS_PER_KEY). Wait for one to finish.",
            code="too_many_uploads",
        )
    active[principal.key_id] = active.get(principal.key_id, 0) + 1
    try:
        return await _upload(request, db, settings, principal)
    finally:
        active[principal.key_id] -= 1
        if not active[principal.key_id]:
            del active[principal.key_id]


async def _upload(request: Request, db, settings, principal):
    upload = await receive_upload(
        request.headers.get("content-type"), request.stream(), settings.files_dir / ".tmp", settings.max_upload_bytes
    )
    try:
        purpose = upload.fields.get("purpose")
        if upload.tmp_path is None:
            raise InvalidRequestError(
                "Missing the `file` part of the upload.", param="file", code="missing_required_parameter"
            )
        if not purpose:
            raise InvalidRequestError(
                "Missing `purpose`: use `fine-tune` or `evals`.", param="purpose", code="missing_required_parameter"
            )
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequestError(
                f"Invalid purpose `{purpose[:64]}`: use one of {', '.join(UPLOAD_PURPOSES)}.",
                param="purpose",
                code="invalid_value",
            )
        # The SDK sends `expires_after` as the form fields `expires_after[anchor]` and `expires_after[seconds]`.
        expires_after = {k[14:-1]: v for k, v in upload.fields.items() if k.startswith("expires_after[")} or None
        expires_at(0, expires_after)  # 400 before anything is stored
        row = await asyncio.to_thread(service.create, db, settings, principal, upload=upload, purpose=purpose)
        if expires_after:
            service.set_expiry(db, row.id, expires_at(row.created_at, expires_after))
    finally:
        upload.discard()
    if purpose == "fine-tune":
        task = asyncio.to_thread(service.validate_stored, db, settings, row.id)
        if row.bytes <= INLINE_VALIDATION_BYTES:
            await task
        else:
            request.app.state.background = getattr(request.app.state, "background", set())
            t = asyncio.ensure_future(task)
            request.app.state.background.add(t)
            t.add_done_callback(request.app.state.background.discard)
    else:
        with db.session() as s:
            s.get(type(row), row.id).status = "processed"
    return service.to_object(service.get(db, principal, row.id, settings))


@router.get("")
def list_files(
    db: DbDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    purpose: str | None = None,
    limit: int = Query(10000, description="1..10000"),
    order: str = "desc",
    after: str | None = None,
):
    rows = service.list_files(db, settings, principal, purpose=purpose, limit=limit, order=order, after=after)
    has_more = len(rows) > limit
    data = [service.to_object(r) for r in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
    }


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    return service.to_object(service.get(db, principal, file_id, settings))


@router.get("/{file_id}/content")
def file_content(file_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    row = service.get(db, principal, file_id, settings)
    path = service.open_verified(row, settings)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"Content-Disposition": service.content_disposition(row.filename, row.id)},
    )


@router.get("/{file_id}/validation")
def file_validation(file_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    """The full validation report (all problems with line numbers, token statistics)."""
    row = service.get(db, principal, file_id, settings)
    if row.validation is None:
        if row.purpose != "fine-tune":
            raise InvalidRequestError(
                f"File {file_id} has purpose `{row.purpose}`; only `fine-tune` files are validated.",
                param="file_id",
                code="not_validated",
            )
        return {"object": "file.validation", "file_id": file_id, "status": "pending"}
    return {"object": "file.validation", "file_id": file_id, "status": "completed", **row.validation}


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    service.delete(db, principal, file_id, settings)
    return FileDeleted(id=file_id)
