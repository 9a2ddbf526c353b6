"""`/v1/uploads` routes, like OpenAI's: create, add a part (multipart field `data`, streamed to
disk), complete (parts in the given order, optional md5), cancel."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from tunegate.edge import DbDep, PrincipalDep, SettingsDep
from tunegate.files import service, uploads
from tunegate.files.router import INLINE_VALIDATION_BYTES
from tunegate.files.store import receive_upload
from tunegate.files.uploads import UploadComplete, UploadCreate, UploadObject, UploadPartObject

router = APIRouter(prefix="/v1/uploads", tags=["files"])


@router.post("", response_model=UploadObject)
def create_upload(body: UploadCreate, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    return uploads.to_object(db, uploads.create(db, settings, principal, body))


@router.post("/{upload_id}/parts", response_model=UploadPartObject)
async def add_part(upload_id: str, request: Request, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    await asyncio.to_thread(uploads.get, db, principal, upload_id)  # 404 before reading the body
    received = await receive_upload(
        request.headers.get("content-type"),
        request.stream(),
        settings.files_dir / ".tmp",
        settings.max_upload_bytes,
        file_field="data",
    )
    try:
        part = await asyncio.to_thread(uploads.add_part, db, settings, principal, upload_id, received)
    finally:
        received.discard()
    return UploadPartObject(id=part.id, created_at=part.created_at, upload_id=upload_id)


@router.post("/{upload_id}/complete", response_model=UploadObject)
async def complete_upload(
    upload_id: str, body: UploadComplete, request: Request, db: DbDep, settings: SettingsDep, principal: PrincipalDep
):
    row = await asyncio.to_thread(uploads.complete, db, settings, principal, upload_id, body)
    if row.purpose == "fine-tune":
        task = asyncio.to_thread(service.validate_stored, db, settings, row.file_id)
        if row.bytes <= INLINE_VALIDATION_BYTES:
            await task
        else:  # a large file is validated in the background, like a large `files.create`
            background = request.app.state.background = getattr(request.app.state, "background", set())
            t = asyncio.ensure_future(task)
            background.add(t)
            t.add_done_callback(background.discard)
    else:
        with db.session() as s:
            from tunegate.db import File

            s.get(File, row.file_id).status = "processed"
    return uploads.to_object(db, row)


@router.post("/{upload_id}/cancel", response_model=UploadObject)
def cancel_upload(upload_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    return uploads.to_object(db, uploads.cancel(db, settings, principal, upload_id))
