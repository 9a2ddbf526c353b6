"""`/v1/evals` like OpenAI's (openai-python's `client.evals` and `client.evals.runs[.output_items]`):
evals CRUD, runs (create, list, retrieve, cancel, delete) and output items. `setup(app)` registers
the run executor (runner.py) as a background service."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Query, Request

from tunegate.edge import DbDep, PrincipalDep, SettingsDep, log_unknown_fields, page
from tunegate.evals import service
from tunegate.evals.schemas import EvalCreate, EvalObject, EvalUpdate, OutputItemObject, RunCreate, RunObject

router = APIRouter(prefix="/v1/evals", tags=["evals"])
Order = Literal["asc", "desc"]


def setup(app) -> None:
    from tunegate.evals.runner import EvalRunner

    app.state.eval_runner = EvalRunner(app)
    app.state.services.append(app.state.eval_runner)


def _resolver(request: Request, principal):
    from tunegate.models.service import resolve

    return lambda model: resolve(request.app.state.db, request.app.state.settings, principal, model)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.post("", response_model=EvalObject)
async def create_eval(body: EvalCreate, request: Request, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    log_unknown_fields(body, "evals.create")
    row = await asyncio.to_thread(service.create_eval, db, settings, principal, body, _resolver(request, principal))
    return service.eval_object(row)


@router.get("")
def list_evals(
    db: DbDep,
    principal: PrincipalDep,
    after: str | None = None,
    limit: int = Query(20),
    order: Order = "asc",
    order_by: Literal["created_at", "updated_at"] = "created_at",
):
    out = page(service.list_evals(db, principal, after=after, limit=limit, order=order), limit)
    out["data"] = [service.eval_object(e) for e in out["data"]]
    return out


@router.get("/{eval_id}", response_model=EvalObject)
def retrieve_eval(eval_id: str, db: DbDep, principal: PrincipalDep):
    return service.eval_object(service.get_eval(db, principal, eval_id))


@router.post("/{eval_id}", response_model=EvalObject)
def update_eval(eval_id: str, body: EvalUpdate, db: DbDep, principal: PrincipalDep):
    return service.eval_object(service.update_eval(db, principal, eval_id, body))


@router.delete("/{eval_id}")
def delete_eval(eval_id: str, db: DbDep, principal: PrincipalDep):
    service.delete_eval(db, principal, eval_id)
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


@router.post("/{eval_id}/runs", response_model=RunObject)
async def create_run(
    eval_id: str, body: RunCreate, request: Request, db: DbDep, settings: SettingsDep, principal: PrincipalDep
):
    from tunegate.files.service import get as get_file

    log_unknown_fields(body, "evals.runs.create")
    row = await asyncio.to_thread(
        service.create_run,
        db,
        settings,
        principal,
        eval_id,
        body,
        _resolver(request, principal),
        lambda file_id: get_file(db, principal, file_id, settings),
    )
    runner = getattr(request.app.state, "eval_runner", None)
    if runner is not None:
        runner.wake()
    return service.run_object(db, row, _base_url(request))


@router.get("/{eval_id}/runs")
def list_runs(
    eval_id: str,
    request: Request,
    db: DbDep,
    principal: PrincipalDep,
    after: str | None = None,
    limit: int = Query(20),
    order: Order = "asc",
    status: str | None = None,
):
    out = page(service.list_runs(db, principal, eval_id, after=after, limit=limit, order=order, status=status), limit)
    out["data"] = [service.run_object(db, r, _base_url(request)) for r in out["data"]]
    return out


@router.get("/{eval_id}/runs/{run_id}", response_model=RunObject)
def retrieve_run(eval_id: str, run_id: str, request: Request, db: DbDep, principal: PrincipalDep):
    return service.run_object(db, service.get_run(db, principal, eval_id, run_id), _base_url(request))


@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=RunObject)
@router.post("/{eval_id}/runs/{run_id}", response_model=RunObject, include_in_schema=False)  # the REST docs' form
def cancel_run(eval_id: str, run_id: str, request: Request, db: DbDep, principal: PrincipalDep):
    return service.run_object(db, service.cancel_run(db, principal, eval_id, run_id), _base_url(request))


@router.delete("/{eval_id}/runs/{run_id}")
def delete_run(eval_id: str, run_id: str, db: DbDep, principal: PrincipalDep):
    service.delete_run(db, principal, eval_id, run_id)
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


@router.get("/{eval_id}/runs/{run_id}/output_items")
def list_output_items(
    eval_id: str,
    run_id: str,
    db: DbDep,
    principal: PrincipalDep,
    after: str | None = None,
    limit: int = Query(20),
    order: Order = "asc",
    status: str | None = None,
):
    out = page(
        service.list_output_items(db, principal, eval_id, run_id, after=after, limit=limit, order=order, status=status),
        limit,
    )
    out["data"] = [service.output_item_object(i) for i in out["data"]]
    return out


@router.get("/{eval_id}/runs/{run_id}/output_items/{item_id}", response_model=OutputItemObject)
def retrieve_output_item(eval_id: str, run_id: str, item_id: str, db: DbDep, principal: PrincipalDep):
    return service.output_item_object(service.get_output_item(db, principal, eval_id, run_id, item_id))
