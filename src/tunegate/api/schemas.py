"""Response shapes shared by several routers (OpenAI's list envelope and deletion object)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


def page(items: list[Any], limit: int, id_of=lambda x: x.id) -> dict:
    """Envelope for a query that fetched `limit + 1` rows: the extra row only tells `has_more`."""
    has_more = len(items) > limit
    items = items[:limit]
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": id_of(items[0]) if items else None,
        "last_id": id_of(items[-1]) if items else None,
    }
