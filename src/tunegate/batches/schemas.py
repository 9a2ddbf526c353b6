"""Batch API objects, shaped like openai-python's `types/batch.py` and the batch file line formats."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ENDPOINTS = ("/v1/chat/completions", "/v1/moderations")
COMPLETION_WINDOWS = {"24h": 24 * 3600}
MAX_LINES = 50_000  # OpenAI's limit on requests per batch
BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


class BatchCreate(BaseModel):
    """`POST /v1/batches`."""

    model_config = ConfigDict(extra="allow")

    input_file_id: str
    """A file uploaded with `purpose="batch"`: one JSON request per line."""
    endpoint: str
    """`/v1/chat/completions` or `/v1/moderations`; every line's `url` must be this endpoint."""
    completion_window: str
    """Only `24h` (OpenAI's only window): unfinished requests then expire."""
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    output_expires_after: dict[str, Any] | None = None
    """`{"anchor": "created_at", "seconds": N}` (one hour to 30 days): the output and error files expire
    N seconds after they are written."""


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    """The successful requests' responses, one JSON line each (`{"id", "custom_id", "response", "error"}`)."""
    error_file_id: str | None = None
    """The failed requests, same line format, with the error inside `response.body` or `error`."""
    errors: BatchErrors | None = None
    """Problems of the input file itself (each with its line and field), when validation failed."""
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None = None
