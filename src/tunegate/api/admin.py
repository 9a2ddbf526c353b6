"""Admin routes (admin keys only): the audit log. `/v1/admin/...` is our extension.

An organisation's admin reads its own organisation's entries; only the platform operator (the key
made at first start) reads other organisations' (`all_orgs=true` or `org_id=...`).
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from tunegate import audit
from tunegate.edge import AdminDep, DbDep
from tunegate.errors import PermissionDeniedError

MAX_SEQ = 2**63 - 1  # the audit sequence is a 64-bit integer in every database

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/audit")
def read_audit(
    db: DbDep,
    principal: AdminDep,
    action: str | None = Query(None, max_length=64),
    after: int | None = Query(None, ge=0, le=MAX_SEQ, description="`id` of the last entry already seen."),
    limit: int = Query(100, ge=1, le=1000),
    all_orgs: bool = Query(False, description="Every organisation's entries (platform operator only)."),
    org_id: str | None = Query(
        None, max_length=64, description="Another organisation's entries (platform operator only)."
    ),
):
    """Newest first. An admin sees their organisation's entries; the platform operator any organisation's."""
    if (all_orgs or (org_id and org_id != principal.org_id)) and not principal.is_operator:
        raise PermissionDeniedError(
            "Only the platform operator's key (the one made at first start) may read other "
            "organisations' audit entries; drop `all_orgs` / `org_id`.",
            param="all_orgs" if all_orgs else "org_id",
            code="operator_required",
        )
    scope = None if all_orgs else (org_id or principal.org_id)
    rows = audit.read(db, org_id=scope, action=action, after=after, limit=limit + 1)
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}
