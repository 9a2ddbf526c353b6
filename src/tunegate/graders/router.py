"""`POST /v1/fine_tuning/alpha/graders/run` and `/validate`: OpenAI's grader API (openai-python's
`client.fine_tuning.alpha.graders`). Logic lives in service.py and grade.py."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from tunegate.edge import PrincipalDep, log_unknown_fields
from tunegate.graders import service
from tunegate.graders.grade import validate_grader
from tunegate.graders.schemas import GraderRunRequest, GraderRunResponse, GraderValidateRequest, GraderValidateResponse

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders", tags=["graders"])


@router.post("/run", response_model=GraderRunResponse)
async def run(body: GraderRunRequest, request: Request, principal: PrincipalDep):
    log_unknown_fields(body, "graders.run")
    loop = asyncio.get_running_loop()
    return await asyncio.to_thread(
        service.run_grader, request.app, principal, loop, body.grader, body.model_sample, body.item
    )


@router.post("/validate", response_model=GraderValidateResponse, response_model_exclude_none=True)
async def validate(body: GraderValidateRequest, request: Request, principal: PrincipalDep):
    log_unknown_fields(body, "graders.validate")
    validate_grader(body.grader, python_enabled=request.app.state.settings.python_graders)
    await asyncio.to_thread(service.check_judges, request.app, principal, body.grader)
    return GraderValidateResponse(grader=body.grader)
