"""Fine-tuning jobs routes: `/v1/fine_tuning/jobs` like OpenAI's, plus pause/resume and promoting a checkpoint
to be the job's model."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Query, Request

from tunegate.edge import DbDep, PrincipalDep, SettingsDep, log_unknown_fields, page
from tunegate.jobs import service
from tunegate.jobs.schemas import FineTuningJob, JobCreate

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
_META = re.compile(r"^metadata\[(.+)\]$")


def setup(app) -> None:
    from tunegate.jobs.executor import JobSupervisor

    app.state.services.append(JobSupervisor(app.state.settings, app.state.db))


@router.post("", response_model=FineTuningJob)
async def create_job(body: JobCreate, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    log_unknown_fields(body, "fine_tuning.jobs.create")
    job = await asyncio.to_thread(service.create, db, settings, principal, body)
    return service.to_object(job)


@router.get("")
def list_jobs(request: Request, db: DbDep, principal: PrincipalDep, after: str | None = None, limit: int = Query(20)):
    metadata = {m.group(1): v for k, v in request.query_params.items() if (m := _META.match(k))}
    rows = service.list_jobs(db, principal, after=after, limit=limit, metadata=metadata)
    out = page(rows, limit)
    out["data"] = [service.to_object(j) for j in out["data"]]
    return out


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(job_id: str, db: DbDep, principal: PrincipalDep):
    return service.to_object(service.get(db, principal, job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, db: DbDep, principal: PrincipalDep):
    return service.to_object(service.request_control(db, principal, job_id, "cancel"))


@router.post("/{job_id}/pause", response_model=FineTuningJob)
def pause_job(job_id: str, db: DbDep, principal: PrincipalDep):
    return service.to_object(service.request_control(db, principal, job_id, "pause"))


@router.post("/{job_id}/resume", response_model=FineTuningJob)
def resume_job(job_id: str, db: DbDep, principal: PrincipalDep):
    return service.to_object(service.request_control(db, principal, job_id, "resume"))


@router.get("/{job_id}/events")
def list_events(job_id: str, db: DbDep, principal: PrincipalDep, after: str | None = None, limit: int = Query(20)):
    out = page(service.list_events(db, principal, job_id, after=after, limit=limit), limit)
    out["data"] = [service.event_object(e) for e in out["data"]]
    return out


@router.get("/{job_id}/checkpoints")
def list_checkpoints(job_id: str, db: DbDep, principal: PrincipalDep, after: str | None = None, limit: int = Query(10)):
    out = page(service.list_checkpoints(db, principal, job_id, after=after, limit=limit), limit)
    out["data"] = [service.checkpoint_object(c) for c in out["data"]]
    return out


@router.post("/{job_id}/checkpoints/{checkpoint_id}/promote", response_model=FineTuningJob)
def promote_checkpoint(job_id: str, checkpoint_id: str, db: DbDep, principal: PrincipalDep):
    """Our extension: the checkpoint (gated on its own) becomes the job's `fine_tuned_model`."""
    return service.to_object(service.promote_checkpoint(db, principal, job_id, checkpoint_id))
