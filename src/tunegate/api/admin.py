"""Admin routes (admin keys only): the audit log. `/v1/admin/...` is our extension."""

from __future__ import annotations

from fastapi import APIRouter, Query

from tunegate import audit
from tunegate.api.deps import AdminDep, DbDep

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/audit")
def read_audit(db: DbDep, principal: AdminDep, action: str | None = None, after: int | None = None,
               limit: int = Query(100, ge=1, le=1000), all_orgs: bool = False):
    """Newest first. An admin sees their organisation's entries, or every organisation's with `all_orgs`."""
    rows = audit.read(db, org_id=None if all_orgs else principal.org_id, action=action, after=after, limit=limit + 1)
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}
