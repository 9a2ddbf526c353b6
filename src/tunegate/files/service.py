"""Files: storing, listing, reading and deleting file objects of one organisation, and running
dataset validation on uploaded fine-tuning data.

Owns the file rows and their bytes under the storage key `files/<org>/<id>` (storage/: the data
dir, a shared mount or an object store; `local_file` gives this machine's copy). The validation
rules live in `files/validate.py`; this module only decides when to run them and stores the report.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import select

from tunegate.audit import record
from tunegate.auth import Principal
from tunegate.db import Database, File
from tunegate.errors import ConflictError, InvalidRequestError, NotFoundError
from tunegate.files.schemas import FileObject
from tunegate.ids import new_id, now
from tunegate.settings import Settings
from tunegate.storage import open_storage

log = logging.getLogger("tunegate.files")


def to_object(row: File) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,
        status_details=row.status_details,
        sha256=row.sha256,
        expires_at=row.expires_at,
    )


def set_expiry(db: Database, file_id: str, expires_at: int | None) -> None:
    """`files.create(expires_after=...)`: after `expires_at` the file is gone (404, not listed, bytes deleted)."""
    with db.session() as s:
        s.get(File, file_id).expires_at = expires_at


def _expired(row: File) -> bool:
    return row.expires_at is not None and now() >= row.expires_at


_UNSAFE_IN_NAME = re.compile(r'["<>\\;\x00-\x1f\x7f]')


def header_filename(filename: str, fallback: str = "download") -> str:
    """The part of a stored filename that is safe to name a download: the last path component,
    without control, format (e.g. right-to-left override) or quoting characters. The stored
    `filename` itself is kept exactly as sent; this is only for headers."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp"))
    name = _UNSAFE_IN_NAME.sub("_", name).strip(" .")[:200]
    return name or fallback


def content_disposition(filename: str, fallback: str = "download") -> str:
    """RFC 6266: an ASCII `filename` for old clients and the exact UTF-8 name in `filename*`."""
    name = header_filename(filename, fallback)
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def local_file(settings: Settings, row: File) -> Path:
    """This machine's copy of a file's bytes (fetched from the storage when it has none yet)."""
    return open_storage(settings).fetch(row.path)


def open_verified(row: File, settings: Settings) -> Path:
    """The stored bytes of `row`, after checking they are the bytes that were uploaded (size and sha256);
    409 `file_corrupted` otherwise (a damaged local copy of an object is dropped, so it is fetched again)."""
    try:
        return _verified(row, local_file(settings, row))
    except ConflictError:
        open_storage(settings).evict(row.path)
        raise


def _verified(row: File, path: Path) -> Path:

    def corrupted(why: str) -> ConflictError:
        return ConflictError(
            f"The stored bytes of file {row.id} are damaged ({why}); they are not served. Upload the file again.",
            param="file_id",
            code="file_corrupted",
        )

    try:
        size = path.stat().st_size
    except OSError:
        raise corrupted("missing from the storage") from None
    if size != row.bytes:
        raise corrupted(f"{size} bytes on disk, {row.bytes} were uploaded")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != row.sha256:
        raise corrupted("the sha256 differs from the upload's")
    return path


def file_key(org_id: str, file_id: str) -> str:
    return f"files/{org_id}/{file_id}"


def file_path(settings: Settings, org_id: str, file_id: str) -> Path:
    """Where a new file's bytes are written on this machine before they are pushed to the storage."""
    return open_storage(settings).local(file_key(org_id, file_id))


def create(db: Database, settings: Settings, principal: Principal, *, upload, purpose: str) -> File:
    """Register an upload whose bytes are in a temp file; validation runs for `fine-tune` data."""
    file_id = new_id("file", 12)
    final = file_path(settings, principal.org_id, file_id)
    upload.commit(final)
    open_storage(settings).push(final)
    row = File(
        id=file_id,
        org_id=principal.org_id,
        project_id=principal.project_id,
        purpose=purpose,
        filename=upload.filename or "upload.jsonl",
        bytes=upload.bytes,
        sha256=upload.sha256,
        path=file_key(principal.org_id, file_id),
        status="uploaded",
    )
    with db.session() as s:
        s.add(row)
    record(
        db,
        "file.uploaded",
        org_id=principal.org_id,
        actor=principal.key_id,
        object_id=file_id,
        details={"purpose": purpose, "bytes": upload.bytes, "sha256": upload.sha256, "filename": row.filename},
    )
    return row


def store_bytes(db: Database, settings: Settings, org_id: str, *, purpose: str, filename: str, data: bytes) -> File:
    """Write a server-made file (e.g. a job's results CSV) as a file object of `org_id`."""
    file_id = new_id("file", 12)
    final = file_path(settings, org_id, file_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name("." + final.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(final)
    open_storage(settings).push(final)
    row = File(
        id=file_id,
        org_id=org_id,
        purpose=purpose,
        filename=filename,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        path=file_key(org_id, file_id),
        status="processed",
    )
    with db.session() as s:
        s.add(row)
    return row


def validate_stored(db: Database, settings: Settings, file_id: str, model: str | None = None) -> dict[str, Any]:
    """Run dataset validation on a stored file with the base model's real tokenizer; store the report."""
    from tunegate.catalog import DEFAULT_MODEL, get_base_model, load_tokenizer
    from tunegate.files.validate import validate_file

    with db.session() as s:
        row = s.get(File, file_id)
    assert row is not None, file_id  # callers validate files they just stored or looked up
    path = local_file(settings, row)
    info = get_base_model(model or DEFAULT_MODEL, settings)
    try:
        report = validate_file(path, tokenizer=load_tokenizer(info.path), context_length=info.context_length)
        data = report.model_dump()
    except Exception as exc:  # a validator bug must not lose the upload: the file is kept and marked
        log.exception("validation of %s failed", file_id)
        data = {
            "valid": False,
            "format": None,
            "n_examples": 0,
            "warnings": [],
            "tokens": None,
            "errors": [
                {
                    "code": "validation_failed",
                    "line": None,
                    "param": None,
                    "message": f"Validation failed unexpectedly ({type(exc).__name__}); the file is stored. Report this.",
                }
            ],
        }
    data["model"] = info.name
    with db.session() as s:
        row = s.get(File, file_id)
        row.validation = data
        row.status = "processed" if data["valid"] else "error"
        row.status_details = None if data["valid"] else summarize_errors(data)
    return data


def interrupted(db: Database) -> list[str]:
    """After a crash: files whose upload finished but whose status was never settled. Non-fine-tune
    files are marked processed at once; fine-tune files are returned to be validated again."""
    with db.session() as s:
        rows = list(s.scalars(select(File).where(File.status == "uploaded")))
        for row in rows:
            if row.purpose != "fine-tune":
                row.status = "processed"
        return [r.id for r in rows if r.purpose == "fine-tune"]


def summarize_errors(report: dict[str, Any], n: int = 5) -> str:
    errs = report.get("errors", [])
    total = sum((report.get("error_counts") or {}).values()) or len(errs)  # the list is capped per code
    parts = [
        f"line {e.get('line')}: {e.get('code')} ({e.get('message')})"
        if e.get("line")
        else f"{e.get('code')} ({e.get('message')})"
        for e in errs[:n]
    ]
    more = f"; and {total - min(n, len(errs))} more" if total > n else ""
    return f"{total} problem(s): " + "; ".join(parts) + more


def get(db: Database, principal: Principal, file_id: str, settings: Settings) -> File:
    with db.session() as s:
        row = s.get(File, file_id)
    if row is not None and _expired(row):  # expiry is enforced on every read; the bytes go at once
        with db.session() as s:
            s.delete(s.get(File, row.id))
        open_storage(settings).remove(row.path)
        row = None
    # Another organisation's file answers exactly like a file that does not exist.
    if row is None or row.org_id != principal.org_id:
        raise NotFoundError(f"No such File object: {file_id}", param="file_id", code="file_not_found")
    return row


def list_files(
    db: Database,
    settings: Settings,
    principal: Principal,
    *,
    purpose: str | None,
    limit: int,
    order: str,
    after: str | None,
) -> list[File]:
    if order not in ("asc", "desc"):
        raise InvalidRequestError("`order` must be `asc` or `desc`.", param="order")
    if not 1 <= limit <= 10000:
        raise InvalidRequestError("`limit` must be between 1 and 10000.", param="limit")
    q = select(File).where(File.org_id == principal.org_id, (File.expires_at.is_(None)) | (File.expires_at > now()))
    if purpose:
        q = q.where(File.purpose == purpose)
    if after:
        cursor = get(db, principal, after, settings)
        q = q.where(File.created_ns < cursor.created_ns if order == "desc" else File.created_ns > cursor.created_ns)
    q = q.order_by(File.created_ns.desc() if order == "desc" else File.created_ns).limit(limit + 1)
    with db.session() as s:
        return list(s.scalars(q))


def delete(db: Database, principal: Principal, file_id: str, settings: Settings) -> None:
    row = get(db, principal, file_id, settings)
    with db.session() as s:
        s.delete(s.get(File, file_id))
    open_storage(settings).remove(row.path)
    record(db, "file.deleted", org_id=principal.org_id, actor=principal.key_id, object_id=file_id)


def delete_org_files(settings: Settings, org_id: str) -> None:
    open_storage(settings).remove(f"files/{org_id}")
