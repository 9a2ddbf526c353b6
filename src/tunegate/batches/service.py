"""Batches: creating (with the whole input file checked first), reading, listing and cancelling the
batches of one organisation, and the per-line records that make a batch durable.

Owns the batch rows and the input-file rules: every line is `{"custom_id", "method": "POST", "url",
"body"}` with a unique `custom_id`, the batch's endpoint as `url`, a body that is a valid request
for that endpoint and, for chat, one model for the whole file (OpenAI's rules). A file that breaks
them gives a batch in status `failed` whose `errors` name each line and field, as OpenAI does.
Running the lines is `batches/runner.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select

from tunegate.audit import record
from tunegate.auth import Principal
from tunegate.batches.schemas import (
    COMPLETION_WINDOWS,
    ENDPOINTS,
    MAX_LINES,
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchObject,
    BatchRequestCounts,
)
from tunegate.db import Batch, Database
from tunegate.errors import ConflictError, InvalidRequestError, NotFoundError, param_from_loc
from tunegate.files import service as files
from tunegate.files.uploads import expires_at
from tunegate.ids import new_id, now
from tunegate.settings import Settings

MAX_REPORTED = 100  # problems listed in `errors` (the count of lines is in the message of the last)
FINISHED = ("failed", "completed", "expired", "cancelled")


def to_object(row: Batch) -> BatchObject:
    errors = BatchErrors(data=[BatchError(**e) for e in row.errors["data"]]) if row.errors else None
    return BatchObject(
        id=row.id,
        endpoint=row.endpoint,
        input_file_id=row.input_file_id,
        completion_window=row.completion_window,
        status=row.status,
        output_file_id=row.output_file_id,
        error_file_id=row.error_file_id,
        errors=errors,
        created_at=row.created_at,
        expires_at=row.expires_at,
        request_counts=BatchRequestCounts(**row.request_counts),
        metadata=row.metadata_,
        **dict(row.times or {}),
    )


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                out.append((lineno, line))
    return out


def _body_problems(endpoint: str, body: dict) -> list[tuple[str, str | None, str]]:
    """(code, param, message) for a request body that the endpoint would refuse before running it."""
    if endpoint == "/v1/moderations":
        if "input" not in body:
            return [("missing_required_parameter", "body.input", "The moderation request has no `input`.")]
        return []
    from tunegate.serve.protocol import ChatCompletionRequest

    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        e = exc.errors()[0]
        p = param_from_loc(tuple(e["loc"]))
        return [("invalid_value", f"body.{p}" if p else "body", f"`body.{p or ''}`: {e['msg']}.")]
    if req.stream:
        return [("invalid_value", "body.stream", "Streaming is not available in a batch; remove `stream`.")]
    return []


def check_lines(path: Path, endpoint: str) -> tuple[int, list[dict]]:
    """(number of requests, problems) of an input file; each problem names its line and field."""
    problems: list[dict] = []
    seen: set[str] = set()
    models: set[str] = set()
    lines = read_lines(path)

    def bad(line: int, code: str, param: str | None, message: str) -> None:
        problems.append({"code": code, "line": line, "param": param, "message": message})

    if not lines:
        bad(None, "empty_file", None, "The input file has no requests.")
    if len(lines) > MAX_LINES:
        bad(
            None,
            "too_many_requests",
            None,
            f"The input file has {len(lines):,} requests; a batch takes at most "
            f"{MAX_LINES:,}. Split it into several batches.",
        )
    for lineno, text in lines:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            bad(lineno, "invalid_json", None, f"Line {lineno} is not valid JSON ({exc.msg}).")
            continue
        if not isinstance(obj, dict):
            bad(
                lineno,
                "invalid_request",
                None,
                f"Line {lineno} must be a JSON object with `custom_id`, `method`, `url` and `body`.",
            )
            continue
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            bad(lineno, "missing_required_parameter", "custom_id", "Each request needs a string `custom_id`.")
        elif cid in seen:
            bad(
                lineno,
                "duplicate_custom_id",
                "custom_id",
                f"The `custom_id` {cid[:64]!r} is used by an earlier line; each request needs its own.",
            )
        else:
            seen.add(cid)
        if obj.get("method") != "POST":
            bad(lineno, "invalid_value", "method", "`method` must be `POST`.")
        if obj.get("url") != endpoint:
            bad(
                lineno,
                "mismatched_endpoint",
                "url",
                f"`url` is {str(obj.get('url'))[:64]!r}, but this batch's "
                f"endpoint is `{endpoint}`; every line must use it.",
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            bad(lineno, "missing_required_parameter", "body", "`body` must be the request object for the endpoint.")
            continue
        for code, param, message in _body_problems(endpoint, body):
            bad(lineno, code, param, f"Line {lineno}: {message}")
        if endpoint == "/v1/chat/completions" and isinstance(body.get("model"), str):
            models.add(body["model"])
            if len(models) > 1:
                bad(
                    lineno,
                    "mismatched_model",
                    "body.model",
                    f"Line {lineno} uses model {body['model'][:64]!r}; a batch uses one model for every request.",
                )
    return len(lines), problems


def create(db: Database, settings: Settings, principal: Principal, body: BatchCreate) -> Batch:
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequestError(
            f"Unsupported `endpoint` {body.endpoint[:64]!r}: use one of {', '.join(ENDPOINTS)}.",
            param="endpoint",
            code="invalid_value",
        )
    if body.completion_window not in COMPLETION_WINDOWS:
        raise InvalidRequestError(
            f"Unsupported `completion_window` {body.completion_window[:16]!r}: use `24h`.",
            param="completion_window",
            code="invalid_value",
        )
    f = files.get(db, principal, body.input_file_id, settings)
    if f.purpose != "batch":
        raise InvalidRequestError(
            f'File {f.id} has purpose `{f.purpose}`; upload the requests with `purpose="batch"`.',
            param="input_file_id",
            code="invalid_file_purpose",
        )
    # Checked now (400 naming the field), applied to the output and error files when they are written.
    expires_at(0, body.output_expires_after, param="output_expires_after")
    total, problems = check_lines(files.local_file(settings, f), body.endpoint)
    t = now()
    row = Batch(
        id=new_id("batch", 12),
        org_id=principal.org_id,
        project_id=principal.project_id,
        key_id=principal.key_id,
        endpoint=body.endpoint,
        input_file_id=f.id,
        completion_window=body.completion_window,
        metadata_=body.metadata,
        created_at=t,
        expires_at=t + COMPLETION_WINDOWS[body.completion_window],
        request_counts={"total": 0 if problems else total, "completed": 0, "failed": 0},
        output_expires_after=body.output_expires_after,
    )
    if problems:
        if len(problems) > MAX_REPORTED:
            rest = len(problems) - MAX_REPORTED + 1
            problems = problems[: MAX_REPORTED - 1] + [
                {"code": "more_errors", "line": None, "param": None, "message": f"... and {rest} more problems."}
            ]
        row.status, row.errors, row.times = "failed", {"data": problems}, {"failed_at": t}
    else:
        row.status, row.times = "in_progress", {"in_progress_at": t}
    with db.session() as s:
        s.add(row)
    record(
        db,
        "batch.created",
        org_id=principal.org_id,
        actor=principal.key_id,
        object_id=row.id,
        details={"endpoint": body.endpoint, "input_file_id": f.id, "requests": total, "status": row.status},
    )
    return row


def get(db: Database, principal: Principal, batch_id: str) -> Batch:
    row = db.owned(Batch, batch_id, principal.org_id)
    if row is None:
        raise NotFoundError(f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")
    return row


def list_batches(db: Database, principal: Principal, *, limit: int, after: str | None) -> list[Batch]:
    if not 1 <= limit <= 100:
        raise InvalidRequestError("`limit` must be between 1 and 100.", param="limit", code="invalid_value")
    q = select(Batch).where(Batch.org_id == principal.org_id)
    if after:
        q = q.where(Batch.created_ns < get(db, principal, after).created_ns)
    with db.session() as s:
        return list(s.scalars(q.order_by(Batch.created_ns.desc()).limit(limit + 1)))


def cancel(db: Database, principal: Principal, batch_id: str) -> Batch:
    get(db, principal, batch_id)
    with db.session() as s:
        row = s.get(Batch, batch_id, with_for_update=True)
        if row.status in FINISHED:
            raise ConflictError(
                f"Batch {batch_id} is already {row.status} and cannot be cancelled.",
                param="batch_id",
                code="batch_not_cancellable",
            )
        if row.status != "cancelling":
            row.status = "cancelling"
            row.times = {**row.times, "cancelling_at": now()}
    record(db, "batch.cancelled", org_id=principal.org_id, actor=principal.key_id, object_id=batch_id)
    return get(db, principal, batch_id)
