"""The Uploads API: one file sent as many parts (each within the single-request limit), assembled
in the order the caller gives at `complete`, checked against the announced size and an optional
md5, and registered as an ordinary file object.

Owns upload and part rows and the parts' bytes under `data_dir/files/.uploads/<upload>/` (each part
streamed to disk as it arrives, never held in memory). An upload expires an hour after it was
created, like OpenAI's; its parts are deleted when it completes, is cancelled or expires. Does not
own file validation (`files/service.py`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunegate.audit import record
from tunegate.auth import Principal
from tunegate.db import Database, Upload, UploadPart
from tunegate.errors import ConflictError, InvalidRequestError, NotFoundError
from tunegate.files import service
from tunegate.files.schemas import UPLOAD_PURPOSES, FileObject
from tunegate.files.store import Upload as ReceivedUpload
from tunegate.ids import new_id, now
from tunegate.settings import Settings

UPLOAD_TTL_S = 3600  # OpenAI: an upload must be completed within an hour
MIN_FILE_TTL_S, MAX_FILE_TTL_S = 3600, 30 * 24 * 3600  # OpenAI's bounds on `expires_after.seconds`


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_FILE_TTL_S, le=MAX_FILE_TTL_S)
    """Between one hour and 30 days."""


class UploadCreate(BaseModel):
    bytes: int = Field(gt=0)
    filename: str = Field(min_length=1, max_length=512)
    mime_type: str = Field(min_length=1, max_length=128)
    purpose: str
    expires_after: ExpiresAfter | None = None
    """Expiry of the file made by `complete`."""


class UploadComplete(BaseModel):
    part_ids: list[str] = Field(min_length=1)
    """The parts in the order they make up the file."""
    md5: str | None = None
    """Optional md5 (hex) of the whole file; checked before the file is made."""


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None


class UploadPartObject(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


def parts_dir(settings: Settings, upload_id: str) -> Path:
    return settings.files_dir / ".uploads" / upload_id


def expires_at(created_at: int, expires_after: Any, param: str = "expires_after") -> int | None:
    """The file expiry for `expires_after` (a dict or model); 400 naming the field when invalid."""
    if expires_after is None:
        return None
    try:
        ea = ExpiresAfter.model_validate(expires_after)
    except ValueError:
        raise InvalidRequestError(
            f'`{param}` must be {{"anchor": "created_at", "seconds": N}} with N between '
            f"{MIN_FILE_TTL_S} (one hour) and {MAX_FILE_TTL_S} (30 days).",
            param=param,
            code="invalid_value",
        ) from None
    return created_at + ea.seconds


def to_object(db: Database, row: Upload) -> UploadObject:
    status = "expired" if row.status == "pending" and now() >= row.expires_at else row.status
    file = None
    if row.file_id:
        with db.session() as s:
            from tunegate.db import File

            f = s.get(File, row.file_id)
        file = service.to_object(f) if f is not None else None
    return UploadObject(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        filename=row.filename,
        purpose=row.purpose,
        status=status,
        file=file,
    )


def create(db: Database, settings: Settings, principal: Principal, body: UploadCreate) -> Upload:
    if body.purpose not in UPLOAD_PURPOSES:
        raise InvalidRequestError(
            f"Invalid purpose `{body.purpose[:64]}`: use one of {', '.join(UPLOAD_PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    if body.bytes > settings.max_upload_total_bytes:
        raise InvalidRequestError(
            f"`bytes` is {body.bytes:,}; the largest upload is {settings.max_upload_total_bytes:,} "
            "bytes (TUNEGATE_MAX_UPLOAD_TOTAL_BYTES).",
            param="bytes",
            code="file_too_large",
        )
    t = now()
    row = Upload(
        id=new_id("upload", 12),
        org_id=principal.org_id,
        project_id=principal.project_id,
        filename=body.filename,
        purpose=body.purpose,
        bytes=body.bytes,
        mime_type=body.mime_type,
        status="pending",
        received=0,
        created_at=t,
        expires_at=t + UPLOAD_TTL_S,
        file_expires_after=body.expires_after.model_dump() if body.expires_after else None,
    )
    with db.session() as s:
        s.add(row)
    return row


def get(db: Database, principal: Principal, upload_id: str) -> Upload:
    row = db.owned(Upload, upload_id, principal.org_id)
    if row is None:
        raise NotFoundError(f"No such Upload object: {upload_id}", param="upload_id", code="upload_not_found")
    return row


def _pending(db: Database, settings: Settings, row: Upload) -> None:
    if row.status == "pending" and now() >= row.expires_at:
        _close(db, settings, row.id, "expired")
        row.status = "expired"
    if row.status != "pending":
        raise ConflictError(
            f"Upload {row.id} is {row.status}; only a pending upload takes parts or completes. Start a new upload.",
            param="upload_id",
            code="upload_not_pending",
        )


def _close(db: Database, settings: Settings, upload_id: str, status: str, file_id: str | None = None) -> None:
    with db.session() as s:
        row = s.get(Upload, upload_id)
        row.status, row.file_id = status, file_id
        for part in s.query(UploadPart).filter(UploadPart.upload_id == upload_id):
            s.delete(part)
    shutil.rmtree(parts_dir(settings, upload_id), ignore_errors=True)


def add_part(
    db: Database, settings: Settings, principal: Principal, upload_id: str, received: ReceivedUpload
) -> UploadPart:
    """Register a part whose bytes the router streamed to a temp file (`received`)."""
    row = get(db, principal, upload_id)
    _pending(db, settings, row)
    if received.tmp_path is None:
        raise InvalidRequestError(
            "Missing the `data` part of the request.", param="data", code="missing_required_parameter"
        )
    with db.session() as s:
        up = s.get(Upload, upload_id, with_for_update=True)
        if up.received + received.bytes > up.bytes:
            raise InvalidRequestError(
                f"This part would bring the upload to {up.received + received.bytes:,} bytes, "
                f"more than the {up.bytes:,} announced at create.",
                param="data",
                code="upload_too_large",
            )
        part = UploadPart(
            id=new_id("part", 12),
            upload_id=upload_id,
            bytes=received.bytes,
            created_at=now(),
            path=str(parts_dir(settings, upload_id) / new_id("p", 8)),
        )
        received.commit(Path(part.path))
        up.received += received.bytes
        s.add(part)
    return part


def complete(db: Database, settings: Settings, principal: Principal, upload_id: str, body: UploadComplete) -> Upload:
    row = get(db, principal, upload_id)
    _pending(db, settings, row)
    with db.session() as s:
        parts = {p.id: p for p in s.query(UploadPart).filter(UploadPart.upload_id == upload_id)}
    for i, pid in enumerate(body.part_ids):
        if pid not in parts:
            raise InvalidRequestError(
                f"`part_ids[{i}]` ({pid[:64]}) is not a part of upload {upload_id}.",
                param=f"part_ids[{i}]",
                code="invalid_value",
            )
        if pid in body.part_ids[:i]:
            raise InvalidRequestError(
                f"`part_ids[{i}]` ({pid}) is listed twice; list each part once, in file order.",
                param=f"part_ids[{i}]",
                code="invalid_value",
            )
    total = sum(parts[p].bytes for p in body.part_ids)
    if total != row.bytes:
        raise InvalidRequestError(
            f"The listed parts hold {total:,} bytes, but the upload announced {row.bytes:,}. "
            "List every part (or add the missing ones).",
            param="part_ids",
            code="invalid_value",
        )
    # Assemble in the caller's order, hashing as we go (streamed: a multi-GB file never sits in memory).
    tmp_dir = settings.files_dir / ".tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".assemble-", dir=tmp_dir)
    md5, sha = hashlib.md5(), hashlib.sha256()
    assembled = ReceivedUpload(filename=row.filename, tmp_path=Path(tmp), bytes=total)
    try:
        with open(fd, "wb") as out:
            for pid in body.part_ids:
                with open(parts[pid].path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        out.write(chunk)
                        md5.update(chunk)
                        sha.update(chunk)
        if body.md5 is not None and body.md5.lower() != md5.hexdigest():
            raise InvalidRequestError(
                f"`md5` is {body.md5[:64]}, but the parts in this order hash to {md5.hexdigest()}. "
                "Check the order of `part_ids` and that every part arrived whole.",
                param="md5",
                code="checksum_mismatch",
            )
        assembled.sha256 = sha.hexdigest()
        f = service.create(db, settings, principal, upload=assembled, purpose=row.purpose)
    finally:
        assembled.discard()
    ttl = expires_at(f.created_at, row.file_expires_after)
    if ttl is not None:
        service.set_expiry(db, f.id, ttl)
    _close(db, settings, upload_id, "completed", f.id)
    record(
        db,
        "upload.completed",
        org_id=principal.org_id,
        actor=principal.key_id,
        object_id=upload_id,
        details={"file_id": f.id, "bytes": total, "parts": len(body.part_ids)},
    )
    return get(db, principal, upload_id)


def cancel(db: Database, settings: Settings, principal: Principal, upload_id: str) -> Upload:
    row = get(db, principal, upload_id)
    _pending(db, settings, row)
    _close(db, settings, upload_id, "cancelled")
    return get(db, principal, upload_id)
