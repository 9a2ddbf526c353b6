"""Safety routes: `POST /v1/moderations` (OpenAI's), and our extensions: a job's safety report
(JSON and HTML), an admin's override of a blocked model, and the organisation's safety policy."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from tunegate.api.deps import AdminDep, DbDep, PrincipalDep, SettingsDep, log_unknown_fields
from tunegate.audit import record
from tunegate.db import Organization
from tunegate.errors import InvalidRequestError, NotFoundError
from tunegate.jobs import service as jobs
from tunegate.safety import jobs as safety_jobs
from tunegate.safety.policy import merge_overrides, policy_from_overrides
from tunegate.safety.schemas import ModerationCreateResponse

router = APIRouter(prefix="/v1", tags=["safety"])


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: Any = Field(..., description="A string, a list of strings, or a list of {type: text, text} parts.")
    model: str | None = None


@router.post("/moderations", response_model=ModerationCreateResponse)
async def create_moderation(body: ModerationRequest, settings: SettingsDep, principal: PrincipalDep):
    from tunegate.safety.moderation import create_response, get_moderator
    from tunegate.safety.schemas import parse_moderation_input

    log_unknown_fields(body, "moderations")
    texts = parse_moderation_input(body.input)
    moderator = await asyncio.to_thread(get_moderator, settings)
    return await asyncio.to_thread(create_response, moderator, texts, body.model)


def _read(path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


@router.get("/fine_tuning/jobs/{job_id}/safety_report")
def safety_report(job_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    """Screening (every line's verdict and the job-level findings) and gate results of a job."""
    job = jobs.get(db, principal, job_id)
    d = safety_jobs.job_dir(settings, job_id)
    return {"object": "fine_tuning.job.safety_report", "job_id": job_id, "status": job.status,
            "screening": _read(d / "screening_report.json"), "gate": _read(d / "gate_report.json"),
            "override": (job.safety or {}).get("override")}


@router.get("/fine_tuning/jobs/{job_id}/safety_report.html", response_class=HTMLResponse)
def safety_report_html(job_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    jobs.get(db, principal, job_id)
    path = safety_jobs.job_dir(settings, job_id) / "gate_report.html"
    if not path.exists():
        raise NotFoundError(f"Job {job_id} has no safety gate report yet (the gate runs after training).",
                            param="fine_tuning_job_id", code="report_not_found")
    return HTMLResponse(path.read_text(encoding="utf-8"))


class OverrideRequest(BaseModel):
    reason: str = Field(..., min_length=10, max_length=2000, description="Why this model may be served anyway.")


@router.post("/fine_tuning/jobs/{job_id}/safety_override")
def safety_override(job_id: str, body: OverrideRequest, db: DbDep, principal: AdminDep):
    """Admin only: serve a model that the safety gate blocked. The reason goes to the audit log."""
    jobs.get(db, principal, job_id)
    safety_jobs.override(db, job_id, principal.org_id, principal.key_id, body.reason)
    return jobs.to_object(jobs.get(db, principal, job_id))


@router.get("/admin/policy")
def get_policy(db: DbDep, principal: AdminDep):
    return {"object": "safety.policy", **safety_jobs.org_policy(db, principal.org_id).model_dump()}


@router.post("/admin/policy")
async def update_policy(request: Request, db: DbDep, principal: AdminDep):
    """Admin only: partial, nested overrides of the organisation's safety policy (validated, audited)."""
    try:
        overrides = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("Send the policy overrides as a JSON object.", code="invalid_json") from None
    if not isinstance(overrides, dict):
        raise InvalidRequestError("Send the policy overrides as a JSON object, e.g. {\"runtime\": {\"input\": "
                                  "\"block\"}}.", param="policy")
    with db.session() as s:
        org = s.get(Organization, principal.org_id)
        merged = merge_overrides(org.policy or {}, overrides)
        policy = policy_from_overrides(merged)  # raises 400 naming the wrong field; nothing is stored then
        org.policy = merged
    record(db, "policy.updated", org_id=principal.org_id, actor=principal.key_id, details={"changes": overrides})
    return {"object": "safety.policy", **policy.model_dump()}


@router.get("/admin/moderation/report")
def moderation_report(settings: SettingsDep, principal: AdminDep):
    """The built-in classifier's training report: per-category precision/recall/F1 and thresholds."""
    from tunegate.safety.classifier import training_report

    return training_report(settings)
