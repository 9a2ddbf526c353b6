"""Files API objects, shaped like openai-python's `FileObject` and `FileDeleted`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Purpose = Literal["fine-tune", "evals", "fine-tune-results", "batch", "batch_output", "user_data"]
UPLOAD_PURPOSES = ("fine-tune", "evals", "batch", "user_data")


class FileObject(BaseModel):
    id: str
    """The file identifier, `file-...`."""
    object: Literal["file"] = "file"
    bytes: int
    """Size in bytes."""
    created_at: int
    """Unix seconds when the file was created."""
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    """`processed` once validation finished; `error` when the data has problems (see `/validation`)."""
    status_details: str | None = None
    """For `error`: the first problems found, with line numbers."""
    expires_at: int | None = None
    sha256: str | None = None
    """Our extension: sha256 of the stored bytes."""


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
