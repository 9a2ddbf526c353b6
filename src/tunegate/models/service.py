"""Model lookup: base models from the catalog, an organisation's fine-tuned models and checkpoints.

Owns the rules of who sees which model: fine-tuned models and their checkpoints belong to one
organisation (others get 404 exactly like unknown ids) and are listed, servable and downloadable
only when a safety gate passed for them (or an admin overrode a block, audited):
- a fine-tuned model: the gate run at the end of its job;
- a checkpoint: the gate passed on its job's final model, or on the checkpoint itself (the gate run
  on demand, `POST /v1/fine_tuning/jobs/{id}/checkpoints/{checkpoint_id}/gate`). A checkpoint of a
  running, paused, cancelled or failed job is never served before that.
A checkpoint shared with another project (`models/permissions.py`) is servable there under the same
rules, as kind `shared-checkpoint`, without its job. Before an adapter is served it is fetched from
the storage into this server's local folder (storage/; rows carry storage keys) and its files are
checked against the sizes and hashes written with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from tunegate.audit import record
from tunegate.auth import Principal
from tunegate.catalog import BaseModelInfo, get_base_model, list_base_models
from tunegate.db import Checkpoint, CheckpointPermission, Database, FineTunedModel, Job
from tunegate.errors import InvalidRequestError, NotFoundError
from tunegate.settings import Settings


@dataclass(frozen=True)
class ResolvedModel:
    id: str
    base: BaseModelInfo
    adapter_path: Path | None
    owned_by: str
    created: int
    kind: str  # base | fine-tuned | checkpoint
    job_id: str | None = None


def _not_found(model: str) -> NotFoundError:
    return NotFoundError(
        f"The model `{model}` does not exist or you do not have access to it.", param="model", code="model_not_found"
    )


def _blocked(model: str) -> NotFoundError:
    return NotFoundError(
        f"The model `{model}` did not pass the safety gate and cannot be served. See its job's "
        "safety report; an admin can override with a reason.",
        param="model",
        code="model_not_found",
    )


def _shared_with(s, checkpoint: str, project_id: str) -> bool:
    """A checkpoint permission (`models/permissions.py`) lets another project use the checkpoint."""
    return (
        s.scalar(
            select(CheckpointPermission.id).where(
                CheckpointPermission.checkpoint == checkpoint, CheckpointPermission.project_id == project_id
            )
        )
        is not None
    )


def _not_gated(model: str, job_id: str, checkpoint_id: str) -> NotFoundError:
    return NotFoundError(
        f"The checkpoint `{model}` has not passed the safety gate (its job did not finish with a "
        f"passing gate), so it is not served. Run the gate on it: POST /v1/fine_tuning/jobs/{job_id}/"
        f"checkpoints/{checkpoint_id}/gate.",
        param="model",
        code="model_not_gated",
    )


def checkpoint_gate_passed(ck: Checkpoint) -> bool:
    return bool(ck.gate) and ck.gate.get("decision") in ("passed", "overridden")


def resolve(
    db: Database, settings: Settings, principal: Principal, model: str, *, verify: bool = True
) -> ResolvedModel:
    """The servable model named `model` for this caller, or 404 `model_not_found` / `model_not_gated`,
    or 409 `adapter_corrupted` when its stored files were damaged."""
    resolved, stored = _resolve(db, settings, principal, model)
    if stored is None:
        return resolved
    from dataclasses import replace

    from tunegate.errors import ConflictError
    from tunegate.registry import verify_adapter
    from tunegate.storage import open_storage

    storage = open_storage(settings)
    local = storage.fetch(stored)
    resolved = replace(resolved, adapter_path=local)
    if verify:
        try:
            verify_adapter(local)
        except ConflictError:  # a damaged copy of an object goes: the next request fetches it again
            storage.evict(stored)
            raise
    return resolved


def _resolve(db: Database, settings: Settings, principal: Principal, model: str) -> tuple[ResolvedModel, str | None]:
    """The model and the storage key of its adapter (None for a base model)."""
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("`model` is required: a base model or one of your `ft:` models.", param="model")
    if not model.startswith("ft:"):
        if model not in list_base_models(settings):
            raise _not_found(model)
        info = get_base_model(model, settings)
        return ResolvedModel(model, info, None, "tunegate", info.created, "base"), None
    with db.session() as s:
        ft = s.get(FineTunedModel, model)
        if ft is not None and ft.org_id == principal.org_id:
            if not ft.deployable:
                raise _blocked(model)
            return ResolvedModel(
                ft.id,
                get_base_model(ft.base_model, settings),
                Path(ft.adapter_path),
                principal.org_name,
                ft.created_at,
                "fine-tuned",
                ft.job_id,
            ), ft.adapter_path
        ck = s.scalar(select(Checkpoint).where(Checkpoint.model_id == model))
        if ck is None or ck.org_id != principal.org_id and not _shared_with(s, model, principal.project_id):
            raise _not_found(model)
        job = s.get(Job, ck.job_id)
        parent = s.scalar(select(FineTunedModel).where(FineTunedModel.job_id == ck.job_id))
    if ck.gate and ck.gate.get("decision") == "blocked":
        raise _blocked(model)
    if not checkpoint_gate_passed(ck):
        if parent is not None and not parent.deployable or job.error and job.error.get("code") == "unsafe_model":
            raise _blocked(model)
        if parent is None or job.status != "succeeded":
            # Another project sees no job id: it may not run the owner's gate.
            raise _not_gated(model, ck.job_id, ck.id) if ck.org_id == principal.org_id else _blocked(model)
    if ck.org_id != principal.org_id:  # shared with the caller's project: usable, the owner's job stays hidden
        return ResolvedModel(
            ck.model_id,
            get_base_model(job.model, settings),
            Path(ck.path),
            "shared",
            ck.created_at,
            "shared-checkpoint",
        ), ck.path
    return ResolvedModel(
        ck.model_id,
        get_base_model(job.model, settings),
        Path(ck.path),
        principal.org_name,
        ck.created_at,
        "checkpoint",
        ck.job_id,
    ), ck.path


def list_models(db: Database, settings: Settings, principal: Principal) -> list[dict]:
    out = []
    for name in list_base_models(settings):
        try:
            created = get_base_model(name, settings).created
        except Exception:  # a registered folder that went missing must not break the whole list
            continue
        out.append({"id": name, "object": "model", "created": created, "owned_by": "tunegate"})
    with db.session() as s:
        fts = list(
            s.scalars(
                select(FineTunedModel)
                .where(FineTunedModel.org_id == principal.org_id, FineTunedModel.deployable.is_(True))
                .order_by(FineTunedModel.created_at)
            )
        )
        deployable_jobs = {f.job_id for f in fts}
        cks = list(
            s.scalars(
                select(Checkpoint)
                .where(Checkpoint.org_id == principal.org_id)
                .order_by(Checkpoint.created_at, Checkpoint.step)
            )
        )
    for f in fts:
        out.append({"id": f.id, "object": "model", "created": f.created_at, "owned_by": principal.org_name})
    for c in cks:
        if (
            c.job_id in deployable_jobs
            and not (c.gate and c.gate.get("decision") == "blocked")
            or checkpoint_gate_passed(c)
        ):
            out.append({"id": c.model_id, "object": "model", "created": c.created_at, "owned_by": principal.org_name})
    return out


def delete(db: Database, settings: Settings, principal: Principal, model: str) -> None:
    if not model.startswith("ft:"):
        if model in list_base_models(settings):
            raise InvalidRequestError(
                f"`{model}` is a base model; only your fine-tuned models can be deleted.",
                param="model",
                code="cannot_delete_base_model",
            )
        raise _not_found(model)
    with db.session() as s:
        ft = s.get(FineTunedModel, model)
        if ft is None or ft.org_id != principal.org_id:
            raise _not_found(model)
        s.delete(ft)
        for ck in s.scalars(select(Checkpoint).where(Checkpoint.job_id == ft.job_id)):
            s.delete(ck)
    record(db, "model.deleted", org_id=principal.org_id, actor=principal.key_id, object_id=model)
