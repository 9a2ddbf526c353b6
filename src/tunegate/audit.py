"""The audit log: who did what, when (uploads, jobs, blocks, overrides, policy changes, keys).

Owns writing and reading audit entries. Entries are append-only; nothing here decides policy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tunegate.db import AuditEntry, Database


def record(
    db: Database,
    action: str,
    *,
    org_id: str | None,
    actor: str | None,
    object_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    with db.session() as s:
        s.add(AuditEntry(action=action, org_id=org_id, actor=actor, object_id=object_id, details=details or {}))


def read(
    db: Database, *, org_id: str | None = None, action: str | None = None, after: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Newest first; `after` is the `seq` of the last entry already seen (for paging)."""
    q = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
    if org_id:
        q = q.where(AuditEntry.org_id == org_id)
    if action:
        q = q.where(AuditEntry.action == action)
    if after is not None:
        q = q.where(AuditEntry.seq < after)
    with db.session() as s:
        return [
            {
                "id": e.seq,
                "object": "audit.entry",
                "created_at": e.created_at,
                "org_id": e.org_id,
                "actor": e.actor,
                "action": e.action,
                "object_id": e.object_id,
                "details": e.details,
            }
            for e in s.scalars(q)
        ]
