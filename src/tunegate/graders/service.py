"""Graders inside the server: a judge that answers with a model this tunegate serves (through the
serving engine's batching), the caller's right to each judge model, and the run/validate actions.

Owns the link between grading logic (grade.py, which needs no server) and serving. Does not own
HTTP (router.py) or eval runs (evals/).
"""

from __future__ import annotations

import asyncio

from tunegate.graders.grade import GradeContext, GradeResult, grade, make_sample, model_graders, validate_grader
from tunegate.graders.schemas import GraderRunResponse, RunMetadata

JUDGE_MAX_TOKENS = 64


def make_judge(app, principal, loop: asyncio.AbstractEventLoop):
    """judge(model, messages, sampling) -> (text, tokens), callable from a worker thread: the engine
    runs on the server's event loop, so each question is handed to that loop and waited for."""
    from tunegate.models.service import resolve
    from tunegate.serve.engine import ServableModel
    from tunegate.serve.protocol import ChatCompletionRequest

    def judge(model: str, messages: list[dict], sampling: dict) -> tuple[str, int]:
        resolved = resolve(app.state.db, app.state.settings, principal, model)
        servable = ServableModel(resolved.id, resolved.base, resolved.adapter_path)
        body = ChatCompletionRequest(
            model=model,
            messages=messages,
            temperature=sampling.get("temperature", 0.0),
            top_p=sampling.get("top_p"),
            seed=sampling.get("seed"),
            max_completion_tokens=sampling.get("max_completions_tokens", JUDGE_MAX_TOKENS),
        )
        done = asyncio.run_coroutine_threadsafe(app.state.chat.create(body, servable), loop).result()
        return done.choices[0].message.content or "", done.usage.total_tokens

    return judge


def check_judges(app, principal, grader) -> None:
    """404 `model_not_found` now, not a failed grade later, when a judge model is not the caller's."""
    from tunegate.models.service import resolve

    for g in model_graders(grader):
        resolve(app.state.db, app.state.settings, principal, g.model)


def context(app, principal, loop) -> GradeContext:
    settings = app.state.settings
    return GradeContext(
        judge=make_judge(app, principal, loop),
        python_enabled=settings.python_graders,
        python_timeout=settings.python_grader_timeout_seconds,
    )


def run_response(result: GradeResult, sampled_model: str | None = None) -> GraderRunResponse:
    scores = dict(result.sub_rewards) or {result.name: result.reward}
    return GraderRunResponse(
        metadata=RunMetadata(
            errors=result.errors,
            execution_time=round(result.execution_time, 6),
            name=result.name,
            sampled_model_name=sampled_model,
            scores=scores,
            token_usage=sum(result.token_usage.values()) or None,
            type=result.type,
        ),
        model_grader_token_usage_per_model=dict(result.token_usage),
        reward=result.reward,
        sub_rewards=dict(result.sub_rewards),
    )


def run_grader(app, principal, loop, grader, model_sample: str, item) -> GraderRunResponse:
    validate_grader(grader, python_enabled=app.state.settings.python_graders)
    check_judges(app, principal, grader)
    return run_response(grade(grader, make_sample(model_sample), item, context(app, principal, loop)))
