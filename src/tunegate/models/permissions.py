"""Checkpoint permissions (OpenAI's `/v1/fine_tuning/checkpoints/{checkpoint}/permissions`): the
owning organisation's admin shares one checkpoint with projects of any organisation.

Owns the permission rows and the sharing rules: only an admin of the owner may create, list or
delete them; a checkpoint is shared only while it is servable for its owner (the safety gate's rules
in `models/service.resolve`), and the grantee's every use goes through the same rules again, so a
model the gate did not pass is never exposed. The grantee sees the checkpoint as a model and can chat
with it, never the owner's job, files or adapter download.
"""

from __future__ import annotations

from sqlalchemy import select

from tunegate.audit import record
from tunegate.auth import Principal
from tunegate.db import Checkpoint, CheckpointPermission, Database, Project
from tunegate.errors import InvalidRequestError, NotFoundError, TunegateError
from tunegate.ids import new_id
from tunegate.models import service
from tunegate.settings import Settings

MAX_PROJECTS = 100


def to_object(p: CheckpointPermission) -> dict:
    return {"id": p.id, "object": "checkpoint.permission", "created_at": p.created_at, "project_id": p.project_id}


def _owned_checkpoint(db: Database, principal: Principal, checkpoint: str) -> Checkpoint:
    with db.session() as s:
        ck = s.scalar(select(Checkpoint).where(Checkpoint.model_id == checkpoint))
    if ck is None or ck.org_id != principal.org_id:
        raise NotFoundError(
            f"No checkpoint `{checkpoint}` of your organisation. Use the `fine_tuned_model_checkpoint` "
            "of one of your jobs' checkpoints.",
            param="fine_tuned_model_checkpoint",
            code="checkpoint_not_found",
        )
    return ck


def create(
    db: Database, settings: Settings, principal: Principal, checkpoint: str, project_ids: list[str]
) -> list[CheckpointPermission]:
    _owned_checkpoint(db, principal, checkpoint)
    if not project_ids or len(project_ids) > MAX_PROJECTS:
        raise InvalidRequestError(
            f"`project_ids` must list 1 to {MAX_PROJECTS} projects.", param="project_ids", code="invalid_value"
        )
    try:  # shareable only while servable for its owner: gate passed (or overridden), files intact
        service.resolve(db, settings, principal, checkpoint)
    except TunegateError as exc:
        raise InvalidRequestError(
            f"The checkpoint `{checkpoint}` cannot be shared: {exc.message}",
            param="fine_tuned_model_checkpoint",
            code="checkpoint_not_shareable",
        ) from None
    out = []
    with db.session() as s:
        for i, pid in enumerate(project_ids):
            if s.get(Project, pid) is None:
                raise InvalidRequestError(
                    f"`project_ids[{i}]` ({str(pid)[:64]}) is not a project of this server.",
                    param=f"project_ids[{i}]",
                    code="invalid_value",
                )
            existing = s.scalar(
                select(CheckpointPermission).where(
                    CheckpointPermission.checkpoint == checkpoint, CheckpointPermission.project_id == pid
                )
            )
            if existing is None:
                existing = CheckpointPermission(
                    id=new_id("cp", 12), checkpoint=checkpoint, org_id=principal.org_id, project_id=pid
                )
                s.add(existing)
                s.flush()
            out.append(existing)
    record(
        db,
        "checkpoint.shared",
        org_id=principal.org_id,
        actor=principal.key_id,
        object_id=checkpoint,
        details={"project_ids": project_ids},
    )
    return out


def list_permissions(
    db: Database,
    principal: Principal,
    checkpoint: str,
    *,
    project_id: str | None,
    limit: int,
    after: str | None,
    order: str,
) -> list[CheckpointPermission]:
    _owned_checkpoint(db, principal, checkpoint)
    if order not in ("ascending", "descending"):
        raise InvalidRequestError("`order` must be `ascending` or `descending`.", param="order", code="invalid_value")
    if not 1 <= limit <= 100:
        raise InvalidRequestError("`limit` must be between 1 and 100.", param="limit", code="invalid_value")
    q = select(CheckpointPermission).where(CheckpointPermission.checkpoint == checkpoint)
    if project_id:
        q = q.where(CheckpointPermission.project_id == project_id)
    col = CheckpointPermission.created_ns
    with db.session() as s:
        if after:
            cursor = s.get(CheckpointPermission, after)
            if cursor is None or cursor.checkpoint != checkpoint:
                raise NotFoundError(
                    f"No permission {after} on this checkpoint.", param="after", code="permission_not_found"
                )
            q = q.where(col > cursor.created_ns if order == "ascending" else col < cursor.created_ns)
        q = q.order_by(col if order == "ascending" else col.desc()).limit(limit + 1)
        return list(s.scalars(q))


def delete(db: Database, principal: Principal, checkpoint: str, permission_id: str) -> None:
    _owned_checkpoint(db, principal, checkpoint)
    with db.session() as s:
        p = s.get(CheckpointPermission, permission_id)
        if p is None or p.checkpoint != checkpoint:
            raise NotFoundError(
                f"No permission {permission_id} on checkpoint `{checkpoint}`.",
                param="permission_id",
                code="permission_not_found",
            )
        s.delete(p)
    record(
        db,
        "checkpoint.unshared",
        org_id=principal.org_id,
        actor=principal.key_id,
        object_id=checkpoint,
        details={"permission_id": permission_id},
    )


def shared_models(db: Database, settings: Settings, principal: Principal) -> list[dict]:
    """The checkpoints shared with the caller's project that it may use now (for `/v1/models`)."""
    with db.session() as s:
        names = list(
            s.scalars(
                select(CheckpointPermission.checkpoint).where(CheckpointPermission.project_id == principal.project_id)
            )
        )
    out = []
    for name in dict.fromkeys(names):
        try:
            m = service.resolve(db, settings, principal, name)
        except TunegateError:
            continue  # blocked or deleted since it was shared: not listed
        if m.kind == "shared-checkpoint":
            out.append({"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by})
    return out
