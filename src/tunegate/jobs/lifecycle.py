"""The job state machine: the statuses, the table of legal transitions, the one function that
changes a job's status, typed lifecycle events, and the one place a finished job's model is
registered.

    validating_files -> queued -> running -> succeeded | failed | cancelled
                                  running -> queued            (a crashed worker is retried)
                        queued | running <-> paused            (pause / resume)
                                   failed -> succeeded         (an admin overrides the safety gate)

Every status change in the code base goes through `transition`; a test fails if another module
assigns `Job.status`. Each change writes a `status` event whose data names the old and new status,
so readers (the dashboard, the CLI, tests) never parse event text. Does not own creating jobs or
the API objects (service.py), nor running them (executor.py, worker.py).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from sqlalchemy.orm import Session, object_session

from tunegate.db import Database, FineTunedModel, Job, JobEvent
from tunegate.errors import ConflictError, NotFoundError
from tunegate.ids import new_id, now

JobStatus = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
UNFINISHED = frozenset(STATUSES) - TERMINAL  # the dashboard's "active" jobs: can still be cancelled
IN_FLIGHT = ("validating_files", "queued", "running")  # what the supervisor moves along

TRANSITIONS: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "paused", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "paused", "queued"}),
    "paused": frozenset({"queued", "cancelled"}),
    "failed": frozenset({"succeeded"}),  # only through `complete(..., override=...)`
    "succeeded": frozenset(),
    "cancelled": frozenset(),
}

EventType = Literal["message", "metrics", "status", "checkpoint", "moderation_checks"]
EventLevel = Literal["info", "warn", "error"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class IllegalTransition(ConflictError):
    """A status change the table does not allow (a race lost to another change, or a bug)."""


def new_event(
    job_id: str, message: str, *, type: EventType = "message", data: Any = None, level: EventLevel = "info"
) -> JobEvent:
    assert type in EVENT_TYPES, type
    return JobEvent(id=new_id("ftevent", 12), job_id=job_id, message=message, level=level, type=type, data=data)


def add_event(
    db: Database,
    job_id: str,
    message: str,
    *,
    type: EventType = "message",
    data: Any = None,
    level: EventLevel = "info",
) -> None:
    with db.session() as s:
        s.add(new_event(job_id, message, type=type, data=data, level=level))


def job_row(s: Session, job_id: str, *, lock: bool = False) -> Job:
    """The job's row in session `s` (locked for update with `lock`); a missing row is a 404."""
    job = s.get(Job, job_id, with_for_update=lock)
    if job is None:
        raise NotFoundError(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
    return job


def can_transition(current: str, to: str) -> bool:
    return to in TRANSITIONS.get(current, frozenset())


def transition(
    job: Job,
    to: JobStatus,
    *,
    message: str,
    level: EventLevel = "info",
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> None:
    """Move `job` (a row attached to an open session) to `to`, set `fields` on it, and add the
    `status` event. Raises `IllegalTransition` when the table forbids the change."""
    unknown = [name for name in fields if not hasattr(Job, name) or name == "status"]
    if unknown:
        raise TypeError(f"Job has no field {unknown[0]!r} to set with a transition")
    current = job.status
    if not can_transition(current, to):
        raise IllegalTransition(
            f"Job {job.id} is {current}; it cannot become {to}.", param="fine_tuning_job_id", code="invalid_job_state"
        )
    for name, value in fields.items():
        setattr(job, name, value)
    job.status = to
    if to in TERMINAL:
        job.finished_at, job.control, job.worker_pid, job.estimated_finish = now(), None, None, None
    session = object_session(job)
    assert session is not None, "transition() needs a job row loaded in an open session"
    session.add(
        new_event(job.id, message, type="status", level=level, data={"status": to, "previous": current, **(data or {})})
    )


def fail(db: Database, job_id: str, code: str, message: str, param: str | None = None) -> bool:
    """Fail an unfinished job with an OpenAI-shaped error. False when it had already finished
    (e.g. cancelled while its files were being checked): a finished job keeps its outcome."""
    with db.session() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.status in TERMINAL:
            return False
        transition(
            job,
            "failed",
            message=f"Job failed: {message}",
            level="error",
            data={"code": code},
            error={"code": code, "message": message, "param": param},
        )
    return True


def register_model(s: Session, job: Job, model_id: str, adapter: str, *, deployable: bool) -> FineTunedModel:
    """The one place a job's trained adapter (its storage key) becomes a model row (servable only when `deployable`)."""
    row = s.get(FineTunedModel, model_id)
    if row is None:
        row = FineTunedModel(
            id=model_id,
            org_id=job.org_id,
            job_id=job.id,
            base_model=job.model,
            adapter_path=str(adapter),
            deployable=deployable,
        )
        s.add(row)
    row.deployable = deployable
    return row


def complete(
    s: Session,
    job: Job,
    model_id: str,
    adapter: str,
    result_file: str,
    *,
    trained_tokens: int | None = None,
    override: dict[str, Any] | None = None,
) -> None:
    """A job's model becomes servable: the model row, the job's result file and `succeeded`.
    The same for a normal success and for an admin's override of a blocked model (`override`
    is then the audit note kept in `job.safety`)."""
    register_model(s, job, model_id, adapter, deployable=True)
    fields: dict[str, Any] = {"fine_tuned_model": model_id, "result_files": [result_file], "error": None}
    if trained_tokens is not None:
        fields["trained_tokens"] = trained_tokens
    if override is not None:
        fields["safety"] = {**(job.safety or {}), "override": {**override, "previous_error": job.error}}
    if job.status == "failed" and override is None:
        raise IllegalTransition(
            f"Job {job.id} failed; only an admin override can make it succeed.",
            param="fine_tuning_job_id",
            code="invalid_job_state",
        )
    transition(
        job,
        "succeeded",
        message=f"The job has successfully completed. New model: {model_id}",
        data={"fine_tuned_model": model_id},
        **fields,
    )
