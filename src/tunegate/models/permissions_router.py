"""`/v1/fine_tuning/checkpoints/{checkpoint}/permissions` routes, like OpenAI's (admin keys only)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel

from tunegate.edge import AdminDep, DbDep, SettingsDep
from tunegate.models import permissions

router = APIRouter(prefix="/v1/fine_tuning/checkpoints", tags=["models"])


class PermissionCreate(BaseModel):
    project_ids: list[str]
    """The projects (of any organisation) that may use the checkpoint."""


def _page(rows: list, limit: int) -> dict:
    data = [permissions.to_object(p) for p in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.post("/{checkpoint}/permissions")
def create_permissions(checkpoint: str, body: PermissionCreate, db: DbDep, settings: SettingsDep, admin: AdminDep):
    rows = permissions.create(db, settings, admin, checkpoint, body.project_ids)
    return _page(rows, len(rows))


@router.get("/{checkpoint}/permissions")
def list_permissions(
    checkpoint: str,
    db: DbDep,
    admin: AdminDep,
    project_id: str | None = None,
    limit: int = Query(10, description="1..100"),
    after: str | None = None,
    order: str = "descending",
):
    rows = permissions.list_permissions(
        db, admin, checkpoint, project_id=project_id, limit=limit, after=after, order=order
    )
    return _page(rows, limit)


@router.delete("/{checkpoint}/permissions/{permission_id}")
def delete_permission(checkpoint: str, permission_id: str, db: DbDep, admin: AdminDep):
    permissions.delete(db, admin, checkpoint, permission_id)
    return {"id": permission_id, "object": "checkpoint.permission", "deleted": True}
