"""Fine-tuning jobs: creation with parameter checks, the state machine, events and checkpoints.

Owns creating job rows, reading them as OpenAI objects and the user's cancel/pause/resume
requests. Status changes go through `lifecycle.transition`; running jobs are driven by the
executor (`jobs/executor.py`); this module never trains.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from tunegate.audit import record
from tunegate.auth import Principal
from tunegate.db import Checkpoint, Database, File, Job, JobEvent
from tunegate.errors import ConflictError, InvalidRequestError, NotFoundError
from tunegate.ids import new_id
from tunegate.jobs.lifecycle import TERMINAL, job_row, new_event, transition
from tunegate.jobs.schemas import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobCreate,
    SupervisedMethod,
)
from tunegate.settings import Settings


def to_object(job: Job, org_name: str | None = None) -> FineTuningJob:
    hp = job.hyperparameters or {}
    return FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=job.error,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        hyperparameters=hp,
        model=_shown_model(job),
        organization_id=job.org_id,
        result_files=job.result_files or [],
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        estimated_finish=job.estimated_finish,
        metadata=job.metadata_,
        method=job.method,
        suffix=job.suffix,
        integrations=[],
    )


def _shown_model(job: Job) -> str:
    """The model the job was created with: a continued job shows its `ft:` parent, like OpenAI."""
    return (job.options or {}).get("parent_model") or job.model


def _requested_method(body: JobCreate) -> dict[str, Any]:
    if body.method is not None and body.hyperparameters is not None:
        raise InvalidRequestError(
            "Pass hyperparameters either in `method.supervised.hyperparameters` or in the "
            "deprecated top-level `hyperparameters`, not both.",
            param="hyperparameters",
        )
    if body.method is not None:
        if body.method.type == "dpo":
            from tunegate.jobs.schemas import DpoMethod

            dpo = body.method.dpo or DpoMethod()
            return {
                "type": "dpo",
                "dpo": {
                    "hyperparameters": dpo.hyperparameters.model_dump(
                        include={"n_epochs", "batch_size", "learning_rate_multiplier", "beta"}
                    )
                },
            }
        if body.method.type == "reinforcement":
            if body.method.reinforcement is None:
                raise InvalidRequestError(
                    "Reinforcement fine-tuning needs `method.reinforcement.grader`: the grader that scores "
                    "each sampled answer (e.g. a string_check of `{{sample.output_text}}` against `{{item.answer}}`).",
                    param="method.reinforcement.grader",
                    code="missing_required_parameter",
                )
            rft = body.method.reinforcement
            hp = rft.hyperparameters.model_dump(
                include={
                    "n_epochs",
                    "batch_size",
                    "learning_rate_multiplier",
                    "compute_multiplier",
                    "eval_interval",
                    "eval_samples",
                    "reasoning_effort",
                }
            )
            from tunegate.train.config import resolve_reinforcement

            resolve_reinforcement(hp)  # a value the trainer cannot use is a 400 now, not a failed job
            return {"type": "reinforcement", "reinforcement": {"grader": rft.grader, "hyperparameters": hp}}
        sup = body.method.supervised or SupervisedMethod()
        return {
            "type": "supervised",
            "supervised": {
                "hyperparameters": sup.hyperparameters.model_dump(
                    include={"n_epochs", "batch_size", "learning_rate_multiplier"}
                )
            },
        }
    hp = (
        body.hyperparameters.model_dump(include={"n_epochs", "batch_size", "learning_rate_multiplier"})
        if body.hyperparameters
        else {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    )
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def _own_file(s, principal: Principal, file_id: str, param: str) -> File:
    row = s.get(File, file_id)
    if row is None or row.org_id != principal.org_id:
        raise InvalidRequestError(
            f"File {file_id} does not exist. Upload it with purpose `fine-tune` first.",
            param=param,
            code="file_not_found",
        )
    if row.purpose != "fine-tune":
        raise InvalidRequestError(
            f"File {file_id} has purpose `{row.purpose}`; fine-tuning needs a file uploaded with purpose `fine-tune`.",
            param=param,
            code="invalid_file_purpose",
        )
    return row


# Continued fine-tuning (`model="ft:..."`): the models stage, which knows which models a caller may
# use, registers how a parent model becomes the base model and the training options (this stage
# cannot import it). Signature: (db, settings, principal, model, options) -> (base model, options).
_PARENT_MODEL_HOOKS: list[Callable[..., tuple[str, dict]]] = []


def register_parent_model_hook(hook: Callable[..., tuple[str, dict]]) -> None:
    if hook not in _PARENT_MODEL_HOOKS:
        _PARENT_MODEL_HOOKS.append(hook)


def create(db: Database, settings: Settings, principal: Principal, body: JobCreate) -> Job:
    from tunegate.catalog.registry import list_base_models

    if body.integrations:  # nothing here reports to Weights & Biases (or anywhere off the machine)
        raise InvalidRequestError(
            "Unsupported parameter: `integrations`: tunegate does not send training runs to outside "
            "services; follow the job's events and metrics instead. Remove `integrations`.",
            param="integrations",
            code="unsupported_parameter",
        )
    options = body.tunegate.model_dump(exclude_none=True) if body.tunegate else {}
    base = body.model
    method = _requested_method(body)
    if isinstance(base, str) and base.startswith("ft:") and _PARENT_MODEL_HOOKS:
        # Any method: the parent's adapter starts the training; for DPO and reinforcement it is also
        # their reference policy (loaded frozen beside the trained adapter, train/lora.reference_policy).
        base, options = _PARENT_MODEL_HOOKS[0](db, settings, principal, body.model, options)
    if base not in list_base_models(settings):
        raise InvalidRequestError(
            f"Model `{body.model}` cannot be fine-tuned here. Base models: "
            f"{', '.join(list_base_models(settings))}, or one of your `ft:` models.",
            param="model",
            code="model_not_available",
        )
    if options.get("quantization"):  # refused now, not as a failed job later
        from tunegate.train.lora import require_qlora

        require_qlora("tunegate.quantization")
    restricted = body.tunegate.admin_only() if body.tunegate else []
    if restricted and not principal.is_admin:
        raise InvalidRequestError(
            f"Only an admin key may set `tunegate.{restricted[0]}`: safety steps cannot be "
            "turned off by a regular key.",
            param=f"tunegate.{restricted[0]}",
            code="admin_required",
        )
    if method["type"] == "reinforcement" and int(options.get("n_workers") or 1) > 1:
        raise InvalidRequestError(
            "Data-parallel training (`tunegate.n_workers` > 1) is for supervised jobs only; use one worker for "
            "reinforcement jobs.",
            param="tunegate.n_workers",
        )
    if settings.executor == "ray" and settings.storage_url and int(options.get("n_workers") or 1) > 1:
        # Ray Train's ranks may run on other nodes, each needing the inputs and rank 0's outputs where
        # the job's task reads them: only a shared filesystem gives that today.
        raise InvalidRequestError(
            "Data-parallel training (`tunegate.n_workers` > 1) on the Ray executor needs the storage on a "
            "shared filesystem; with an object store (TUNEGATE_STORAGE_URL) use one worker per job.",
            param="tunegate.n_workers",
            code="unsupported_with_object_store",
        )
    with db.session() as s:
        stored = [("training_file", _own_file(s, principal, body.training_file, "training_file").path)]
        if body.validation_file:
            stored.append(("validation_file", _own_file(s, principal, body.validation_file, "validation_file").path))
    if method["type"] == "reinforcement":
        from tunegate.storage import open_storage

        storage = open_storage(settings)  # the grader check reads the files: this machine's copies
        files = [(param, str(storage.fetch(key))) for param, key in stored]
        from tunegate.jobs.steps import reward_graders

        method["reinforcement"]["grader"] = reward_graders().check(
            method["reinforcement"]["grader"], settings=settings, files=files, param="method.reinforcement.grader"
        )
    with db.session() as s:
        job = Job(
            id=new_id("ftjob", 12),
            org_id=principal.org_id,
            project_id=principal.project_id,
            created_by=principal.key_id,
            model=base,
            training_file=body.training_file,
            validation_file=body.validation_file,
            suffix=body.suffix,
            seed=body.seed if body.seed is not None else random.randint(0, 2**31 - 1),
            metadata_=body.metadata,
            method=method,
            hyperparameters=method[method["type"]]["hyperparameters"],
            options=options,
            status="validating_files",
            result_files=[],
            progress={},
            safety={},
        )
        s.add(job)
        s.add(
            new_event(
                job.id,
                "Created fine-tuning job: " + job.id,
                type="status",
                data={"status": "validating_files", "previous": None},
            )
        )
    record(
        db,
        "job.created",
        org_id=principal.org_id,
        actor=principal.key_id,
        object_id=job.id,
        details={
            "model": body.model,
            "training_file": body.training_file,
            "options": options,
            "safety_switches": restricted,
        },
    )
    return job


def get(db: Database, principal: Principal, job_id: str) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
    if job is None or job.org_id != principal.org_id:
        raise NotFoundError(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
    return job


def list_jobs(
    db: Database, principal: Principal, *, after: str | None, limit: int, metadata: dict[str, str]
) -> list[Job]:
    _check_limit(limit)
    q = select(Job).where(Job.org_id == principal.org_id)
    if after:
        cursor = get(db, principal, after)
        q = q.where(Job.created_ns < cursor.created_ns)
    q = q.order_by(Job.created_ns.desc())
    with db.session() as s:
        rows = s.scalars(q).all() if metadata else s.scalars(q.limit(limit + 1)).all()
    if metadata:  # JSON filtering is portable only in Python; job counts per org are small
        rows = [j for j in rows if all((j.metadata_ or {}).get(k) == v for k, v in metadata.items())][: limit + 1]
    return list(rows)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise InvalidRequestError("`limit` must be between 1 and 100.", param="limit")


def list_events(db: Database, principal: Principal, job_id: str, *, after: str | None, limit: int) -> list[JobEvent]:
    get(db, principal, job_id)
    _check_limit(limit)
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    with db.session() as s:
        if after:
            cursor = s.scalar(select(JobEvent).where(JobEvent.id == after, JobEvent.job_id == job_id))
            if cursor is None:
                raise InvalidRequestError(f"No event {after} in job {job_id}.", param="after")
            q = q.where(JobEvent.seq < cursor.seq)
        return list(s.scalars(q.order_by(JobEvent.seq.desc()).limit(limit + 1)))


def event_object(e: JobEvent) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=e.id, created_at=e.created_at, level=e.level, message=e.message, data=e.data, type=e.type
    )


def list_checkpoints(
    db: Database, principal: Principal, job_id: str, *, after: str | None, limit: int
) -> list[Checkpoint]:
    get(db, principal, job_id)
    _check_limit(limit)
    q = select(Checkpoint).where(Checkpoint.job_id == job_id)
    with db.session() as s:
        if after:
            cursor = s.get(Checkpoint, after)
            if cursor is None or cursor.job_id != job_id:
                raise InvalidRequestError(f"No checkpoint {after} in job {job_id}.", param="after")
            q = q.where(Checkpoint.step < cursor.step)
        return list(s.scalars(q.order_by(Checkpoint.step.desc()).limit(limit + 1)))


def checkpoint_object(c: Checkpoint) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=c.id,
        created_at=c.created_at,
        fine_tuned_model_checkpoint=c.model_id,
        fine_tuning_job_id=c.job_id,
        metrics=c.metrics or {},
        step_number=c.step,
    )


def request_control(db: Database, principal: Principal, job_id: str, action: str) -> Job:
    """cancel | pause | resume. Jobs not running change at once; running ones are told via `control`."""
    get(db, principal, job_id)
    with db.session() as s:
        job = job_row(s, job_id, lock=True)
        st = job.status
        if action == "cancel":
            if st in TERMINAL:
                raise ConflictError(
                    f"Job {job_id} is already {st}; only unfinished jobs can be cancelled.",
                    param="fine_tuning_job_id",
                    code="job_not_cancellable",
                )
            if st == "running":
                job.control = "cancel"
                s.add(new_event(job_id, "Cancellation requested; training stops after the current step."))
            else:
                transition(job, "cancelled", message="Job cancelled.")
        elif action == "pause":
            if st != "running" and st != "queued":
                raise ConflictError(
                    f"Job {job_id} is {st}; only queued or running jobs can be paused.",
                    param="fine_tuning_job_id",
                    code="job_not_pausable",
                )
            if st == "running":
                job.control = "pause"
                s.add(new_event(job_id, "Pause requested; a checkpoint is saved after the current step."))
            else:
                transition(job, "paused", message="Job paused.")
        elif action == "resume":
            if st != "paused":
                raise ConflictError(
                    f"Job {job_id} is {st}; only paused jobs can be resumed.",
                    param="fine_tuning_job_id",
                    code="job_not_resumable",
                )
            transition(
                job, "queued", message="Job resumed; it is queued and continues from its last checkpoint.", control=None
            )
        s.flush()
    record(db, f"job.{action}", org_id=principal.org_id, actor=principal.key_id, object_id=job_id)
    return get(db, principal, job_id)


def promote_checkpoint(db: Database, principal: Principal, job_id: str, checkpoint_id: str) -> Job:
    """Our extension: make a checkpoint (e.g. the best by validation, which the regression check names)
    the job's `fine_tuned_model`. Only a checkpoint that passed the safety gate itself may be promoted
    (`POST .../checkpoints/{id}/gate` runs it): the gate of the final model says nothing of earlier weights."""
    get(db, principal, job_id)
    with db.session() as s:
        job = job_row(s, job_id, lock=True)
        ck = s.get(Checkpoint, checkpoint_id)
        if ck is None or ck.job_id != job_id:
            raise NotFoundError(
                f"No such checkpoint {checkpoint_id} of job {job_id}.",
                param="checkpoint_id",
                code="checkpoint_not_found",
            )
        if job.status != "succeeded":
            raise ConflictError(
                f"Job {job_id} is {job.status}; a checkpoint can be promoted to the job's model once the job succeeded.",
                param="fine_tuning_job_id",
                code="job_not_succeeded",
            )
        if (ck.gate or {}).get("decision") not in ("passed", "overridden"):
            raise ConflictError(
                f"Checkpoint {checkpoint_id} has not passed the safety gate, so it cannot become the job's model. "
                f"Run the gate on it first: POST /v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/gate.",
                param="checkpoint_id",
                code="checkpoint_not_gated",
            )
        previous = job.fine_tuned_model
        job.fine_tuned_model = ck.model_id
        s.add(
            new_event(
                job_id,
                f"Checkpoint at step {ck.step} promoted: the job's model is now {ck.model_id} (was {previous}).",
                data={
                    "promoted_checkpoint": ck.id,
                    "step": ck.step,
                    "fine_tuned_model": ck.model_id,
                    "previous": previous,
                },
            )
        )
    record(
        db,
        "job.checkpoint_promoted",
        org_id=principal.org_id,
        actor=principal.key_id,
        object_id=job_id,
        details={"checkpoint": ck.model_id, "previous": previous},
    )
    return get(db, principal, job_id)
