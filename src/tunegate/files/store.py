"""Streams a multipart upload straight into the file store, atomically, with a size limit.

Owns the bytes on disk: a part is hashed and written to a temporary file next to its final place
while it arrives (never held in memory), then renamed into place. An upload over the limit, a
broken body or a client that disconnects leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from tunegate.errors import InvalidRequestError, PayloadTooLargeError

MAX_FIELD_BYTES = 64 * 1024
MAX_BOUNDARY = 70  # RFC 2046; the multipart parser fails on much longer ones
_HOST = socket.gethostname().replace("-", "_")[:32]


def tmp_prefix() -> str:
    """Temp upload names carry the writing server's host and pid, so a restarted server knows which
    are orphans (`sweep_tmp`) even when several servers share the file store."""
    return f".upload-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_tmp(tmp_dir: Path, stale_seconds: float) -> int:
    """Delete temp uploads whose server is gone (killed mid-upload) or that stopped growing long ago.
    Returns how many were removed."""
    removed = 0
    now = time.time()
    for path in Path(tmp_dir).glob(".upload-*"):
        parts = path.name.split("-")
        host, pid = (parts[1], int(parts[2])) if len(parts) >= 4 and parts[2].isdigit() else (None, None)
        try:
            stale = now - path.stat().st_mtime > stale_seconds
        except OSError:
            continue
        orphan = host == _HOST and pid is not None and (pid == os.getpid() or not _alive(pid))
        if orphan or stale or pid is None:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    tmp_path: Path | None = None
    bytes: int = 0
    sha256: str = ""

    def discard(self) -> None:
        if self.tmp_path is not None:
            self.tmp_path.unlink(missing_ok=True)
            self.tmp_path = None

    def commit(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp_path, final)
        self.tmp_path = None


async def receive_upload(
    content_type: str | None, stream: AsyncIterator[bytes], tmp_dir: Path, limit: int, file_field: str = "file"
) -> Upload:
    """Parse a multipart/form-data body; the part named `file_field` goes to disk, others are small fields."""
    ctype, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InvalidRequestError(
            "Upload files as multipart/form-data with fields `file` and `purpose` (the openai SDK does this).",
            param="file",
            code="invalid_content_type",
        )
    if len(boundary) > MAX_BOUNDARY:
        raise InvalidRequestError(
            f"The multipart boundary is {len(boundary)} characters; RFC 2046 allows at most {MAX_BOUNDARY}.",
            param="file",
            code="invalid_content_type",
        )
    tmp_dir.mkdir(parents=True, exist_ok=True)
    up = Upload()
    state: dict = {"headers": {}, "hname": b"", "hval": b"", "name": None, "buf": None, "fh": None, "hash": None}

    def on_header_field(data, start, end):
        state["hname"] += data[start:end]

    def on_header_value(data, start, end):
        state["hval"] += data[start:end]

    def on_header_end():
        state["headers"][state["hname"].decode("latin-1").lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished():
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == file_field:
            if up.tmp_path is not None:
                raise InvalidRequestError(f"Send exactly one `{file_field}` part.", param=file_field)
            up.filename = disp.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")[:512]
            fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(), dir=tmp_dir)
            up.tmp_path = Path(tmp)
            state["fh"] = os.fdopen(fd, "wb")
            state["hash"] = hashlib.sha256()
        else:
            state["buf"] = bytearray()

    def on_part_data(data, start, end):
        chunk = data[start:end]
        if state["fh"] is not None:
            up.bytes += len(chunk)
            if up.bytes > limit:
                raise PayloadTooLargeError(
                    f"The file is larger than the upload limit of {limit} bytes (TUNEGATE_MAX_UPLOAD_BYTES). "
                    "Split it or raise the limit.",
                    param="file",
                    code="file_too_large",
                )
            state["fh"].write(chunk)
            state["hash"].update(chunk)
        else:
            state["buf"] += chunk
            if len(state["buf"]) > MAX_FIELD_BYTES:
                raise InvalidRequestError(f"Form field `{state['name']}` is too long.", param=state["name"])

    def on_part_end():
        if state["fh"] is not None:
            state["fh"].close()
            state["fh"] = None
            up.sha256 = state["hash"].hexdigest()
        elif state["buf"] is not None:
            up.fields[state["name"]] = bytes(state["buf"]).decode("utf-8", "replace")
        state.update(headers={}, buf=None, name=None)

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
        if state["fh"] is not None:  # body ended in the middle of the file part
            raise InvalidRequestError("The upload ended before the file was complete. Retry the upload.", param="file")
    except BaseException as exc:
        if state["fh"] is not None:
            state["fh"].close()
        up.discard()
        if isinstance(exc, (InvalidRequestError, PayloadTooLargeError)):
            raise
        if isinstance(exc, Exception) and exc.__class__.__module__.startswith("python_multipart"):
            raise InvalidRequestError(f"Malformed multipart body: {exc}", param="file") from None
        raise
    return up
