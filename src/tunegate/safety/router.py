"""Safety routes: `POST /v1/moderations` (OpenAI's), and our extensions: a job's safety report
(JSON and HTML), an admin's override of a blocked model, and the organisation's safety policy."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunegate.audit import record
from tunegate.db import Organization
from tunegate.edge import AdminDep, DbDep, PrincipalDep, SettingsDep, log_unknown_fields
from tunegate.errors import ConflictError, InvalidRequestError, NotFoundError
from tunegate.jobs import service as jobs
from tunegate.safety import jobs as safety_jobs
from tunegate.safety.policy import merge_overrides, policy_from_overrides
from tunegate.safety.schemas import ModerationCreateResponse
from tunegate.text import check_text
from tunegate.threads import run_with_cores

router = APIRouter(prefix="/v1", tags=["safety"])
log = logging.getLogger("tunegate.safety")


class ModeratorWarmup:
    """Loads the moderator (and runs one judgement) while the server starts, so that neither the
    first `/v1/moderations` nor the first chat's runtime moderation waits for it."""

    is_worker = False

    def __init__(self, settings):
        self.settings = settings

    def _load(self) -> None:
        from tunegate.safety.moderation import get_moderator

        try:
            get_moderator(self.settings).moderate(
                ["warm-up"]
            ) if self.settings.moderator == "builtin" else get_moderator(self.settings)
        except Exception as e:  # the route reports the same error, with its fix, on first use
            log.warning("moderator not loaded at start: %s", e)

    async def start(self) -> None:
        # Loading runs multi-threaded ops: in a thread that ends with it, so no pool is left (tunegate/threads.py).
        await asyncio.to_thread(run_with_cores, self._load)

    async def stop(self) -> None:
        return None


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: Any = Field(..., description="A string, a list of strings, or a list of {type: text, text} parts.")
    model: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data):
        return check_text(data)


@router.post("/moderations", response_model=ModerationCreateResponse)
async def create_moderation(body: ModerationRequest, settings: SettingsDep, principal: PrincipalDep):
    from tunegate.safety.moderation import create_response, get_moderator
    from tunegate.safety.schemas import parse_moderation_input

    log_unknown_fields(body, "moderations")
    texts = parse_moderation_input(body.input)
    moderator = await asyncio.to_thread(get_moderator, settings)
    return await asyncio.to_thread(create_response, moderator, texts, body.model)


def _read(path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):  # truncated or damaged on disk
        raise ConflictError(
            f"The stored report {path.name} is damaged; re-run the check that wrote it.",
            param="fine_tuning_job_id",
            code="report_corrupted",
        ) from None


@router.get("/fine_tuning/jobs/{job_id}/safety_report")
def safety_report(job_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    """Screening (every line's verdict and the job-level findings) and gate results of a job."""
    job = jobs.get(db, principal, job_id)
    from tunegate.storage import job_key, open_storage

    storage, key = open_storage(settings), job_key(job_id)  # reports by key: written by any server or worker
    return {
        "object": "fine_tuning.job.safety_report",
        "job_id": job_id,
        "status": job.status,
        "screening": _read(storage.fetch(f"{key}/screening_report.json")),
        "gate": _read(storage.fetch(f"{key}/gate_report.json")),
        "override": (job.safety or {}).get("override"),
    }


@router.get("/fine_tuning/jobs/{job_id}/safety_report.html", response_class=HTMLResponse)
def safety_report_html(job_id: str, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    jobs.get(db, principal, job_id)
    from tunegate.storage import job_key, open_storage

    path = open_storage(settings).fetch(f"{job_key(job_id)}/gate_report.html")
    if not path.exists():
        raise NotFoundError(
            f"Job {job_id} has no safety gate report yet (the gate runs after training).",
            param="fine_tuning_job_id",
            code="report_not_found",
        )
    try:
        return HTMLResponse(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        raise ConflictError(
            "The stored gate report is damaged; re-run the gate.", param="fine_tuning_job_id", code="report_corrupted"
        ) from None


class OverrideRequest(BaseModel):
    reason: str = Field(..., min_length=10, max_length=2000, description="Why this model may be served anyway.")


@router.post("/fine_tuning/jobs/{job_id}/safety_override")
def safety_override(job_id: str, body: OverrideRequest, db: DbDep, settings: SettingsDep, principal: AdminDep):
    """Admin only: serve a model that the safety gate blocked. The reason goes to the audit log."""
    jobs.get(db, principal, job_id)
    safety_jobs.override(db, settings, job_id, principal.org_id, principal.key_id, body.reason)
    return jobs.to_object(jobs.get(db, principal, job_id))


def _checkpoint(db, principal, job_id: str, checkpoint_id: str):
    from tunegate.db import Checkpoint

    jobs.get(db, principal, job_id)
    with db.session() as s:
        ck = s.get(Checkpoint, checkpoint_id)
    if ck is None or ck.job_id != job_id:
        raise NotFoundError(
            f"No such checkpoint {checkpoint_id} of job {job_id}.", param="checkpoint_id", code="checkpoint_not_found"
        )
    return ck


def _gate_object(ck, running: bool) -> dict:
    gate = ck.gate or {}
    return {
        "object": "fine_tuning.job.checkpoint.gate",
        "checkpoint_id": ck.id,
        "fine_tuned_model_checkpoint": ck.model_id,
        "fine_tuning_job_id": ck.job_id,
        "status": "running" if running else (gate.get("decision") or "not_gated"),
        "reasons": gate.get("reasons", []),
    }


@router.post("/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/gate", status_code=202)
async def gate_checkpoint(
    job_id: str, checkpoint_id: str, request: Request, db: DbDep, settings: SettingsDep, principal: PrincipalDep
):
    """Our extension: run the safety gate on one checkpoint (e.g. of a cancelled or paused job). It is
    servable only if the gate passes; poll `GET` on the same path for the decision."""
    ck = await asyncio.to_thread(_checkpoint, db, principal, job_id, checkpoint_id)
    running: set | None = getattr(request.app.state, "gates_running", None)
    if running is None:
        running = request.app.state.gates_running = set()
    if ck.id not in running:
        running.add(ck.id)
        record(db, "checkpoint.gate_requested", org_id=principal.org_id, actor=principal.key_id, object_id=ck.model_id)
        task = asyncio.ensure_future(
            asyncio.to_thread(safety_jobs.gate_checkpoint, db, settings, ck.id, principal.key_id)
        )
        task.add_done_callback(lambda _t, i=ck.id: running.discard(i))
    return _gate_object(ck, running=True)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/gate")
def checkpoint_gate(job_id: str, checkpoint_id: str, request: Request, db: DbDep, principal: PrincipalDep):
    """The decision of the last gate run on this checkpoint (`not_gated`, `running`, `passed`, `blocked`, `error`)."""
    ck = _checkpoint(db, principal, job_id, checkpoint_id)
    return _gate_object(ck, running=ck.id in getattr(request.app.state, "gates_running", set()))


@router.get("/admin/policy")
def get_policy(db: DbDep, principal: AdminDep):
    return {"object": "safety.policy", **safety_jobs.org_policy(db, principal.org_id).model_dump()}


def setup(app) -> None:
    """Load the moderator at start; publish the policy body's schema (every field optional: the body
    is a partial, nested override)."""
    from tunegate.safety.policy import SafetyPolicy

    app.state.services.append(ModeratorWarmup(app.state.settings))
    schema = SafetyPolicy.model_json_schema(ref_template="#/components/schemas/SafetyPolicyOverrides_{model}")
    defs = schema.pop("$defs", {})
    components = getattr(app.state, "openapi_components", None) or {}
    for name, model in [
        ("SafetyPolicyOverrides", schema),
        *((f"SafetyPolicyOverrides_{k}", v) for k, v in defs.items()),
    ]:
        model.pop("required", None)
        components[name] = model
    app.state.openapi_components = components


@router.post(
    "/admin/policy",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SafetyPolicyOverrides"}}},
        }
    },
)
async def update_policy(request: Request, db: DbDep, principal: AdminDep):
    """Admin only: partial, nested overrides of the organisation's safety policy (validated, audited)."""
    try:
        overrides = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("Send the policy overrides as a JSON object.", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequestError(
            "The policy body is nested too deeply; the policy is at most 4 levels deep.",
            param="policy",
            code="invalid_value",
        ) from None
    check_text(overrides, "policy")  # a body nested 1,000 deep is refused before the merge recurses into it
    if not isinstance(overrides, dict):
        raise InvalidRequestError(
            'Send the policy overrides as a JSON object, e.g. {"runtime": {"input": "block"}}.', param="policy"
        )
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
