"""`/v1/batches` routes, like OpenAI's: create, retrieve, list, cancel. `setup(app)` registers the
batch runner as a server service."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, FastAPI, Query

from tunegate.batches import service
from tunegate.batches.schemas import BatchCreate, BatchObject
from tunegate.edge import DbDep, PrincipalDep, SettingsDep, log_unknown_fields

router = APIRouter(prefix="/v1/batches", tags=["batches"])


def setup(app: FastAPI) -> None:
    from tunegate.batches.runner import BatchRunner

    app.state.services.append(BatchRunner(app))


@router.post("", response_model=BatchObject)
async def create_batch(body: BatchCreate, db: DbDep, settings: SettingsDep, principal: PrincipalDep):
    log_unknown_fields(body, "batches.create")
    row = await asyncio.to_thread(service.create, db, settings, principal, body)
    return service.to_object(row)


@router.get("")
def list_batches(
    db: DbDep, principal: PrincipalDep, limit: int = Query(20, description="1..100"), after: str | None = None
):
    rows = service.list_batches(db, principal, limit=limit, after=after)
    data = [service.to_object(r) for r in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
    }


@router.get("/{batch_id}", response_model=BatchObject)
def retrieve_batch(batch_id: str, db: DbDep, principal: PrincipalDep):
    return service.to_object(service.get(db, principal, batch_id))


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel_batch(batch_id: str, db: DbDep, principal: PrincipalDep):
    return service.to_object(service.cancel(db, principal, batch_id))
