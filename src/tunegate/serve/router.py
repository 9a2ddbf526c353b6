"""`POST /v1/chat/completions`: JSON, or Server-Sent Events when `stream` is true.

Owns the HTTP edge of serving only: authentication comes from `edge.py`, model lookup from
`models/service.py`, the protocol logic from `serve/service.py`, SSE framing from sse-starlette, and
noticing a client that went away (a streaming response is cancelled by sse-starlette; a JSON one is
watched here), so its batch slots are freed. `setup(app)` creates the server's one engine, chosen by
`TUNEGATE_ENGINE` through the plugin registry, and registers it as a service (started and stopped
with the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter

from fastapi import APIRouter, FastAPI, Request, Response
from sse_starlette.sse import EventSourceResponse

from tunegate.edge import AdminDep, PrincipalDep
from tunegate.errors import TunegateError
from tunegate.models.service import resolve
from tunegate.plugins import ENGINES
from tunegate.safety.jobs import org_policy
from tunegate.safety.moderation import get_moderator
from tunegate.safety.runtime import RuntimeModeration
from tunegate.serve.engine import ServableModel
from tunegate.serve.limits import Caller, ChatLimits
from tunegate.serve.protocol import ChatCompletion, ChatCompletionRequest
from tunegate.serve.service import ChatService

router = APIRouter(prefix="/v1", tags=["chat"])


def setup(app: FastAPI) -> None:
    settings = app.state.settings
    engine = ENGINES.get(settings.engine)(settings)  # TUNEGATE_ENGINE, through the plugin registry
    app.state.chat = ChatService(engine, ChatLimits.from_settings(settings))
    app.state.services.append(engine)
    app.add_middleware(NoticeDisconnect)


GONE = "tunegate.client_gone"  # scope key: an asyncio.Event set when the client of the request went away


class NoticeDisconnect:
    """ASGI middleware (outermost, so it sees the server's own `receive`): once a chat request's body
    is read, watch for the client going away and set `scope[GONE]`. Starlette's `is_disconnected()`
    cannot see it through `@app.middleware` wrappers, and a JSON answer is only sent at the end."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        gone = scope[GONE] = asyncio.Event()
        watcher: asyncio.Task | None = None

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def receive_then_watch():
            nonlocal watcher
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body") and watcher is None:
                watcher = asyncio.ensure_future(watch())
            return message

        try:
            await self.app(scope, receive_then_watch, send)
        finally:
            if watcher is not None:
                watcher.cancel()


_LEVEL = {"off": 0, "flag": 1, "block": 2}


async def _moderation(app, principal, body: ChatCompletionRequest, model_id: str) -> RuntimeModeration:
    """The organisation's runtime moderation for this request (enforced for every model). An admin may
    change it with our `tunegate.moderation` extension; OpenAI's own `moderation` parameter may only make
    it stricter (`score` runs and reports, `block` refuses flagged text)."""
    settings, db = app.state.settings, app.state.db
    policy = await asyncio.to_thread(org_policy, db, principal.org_id)
    override = body.tunegate.moderation if body.tunegate else None
    asked = body.moderation.policy if body.moderation and body.moderation.policy else None
    wanted = {
        "input": getattr(getattr(asked, "input", None), "mode", None),
        "output": getattr(getattr(asked, "output", None), "mode", None),
    }
    if body.moderation and not any(wanted.values()):
        wanted = {"input": "score", "output": "score"}  # OpenAI's default policy: score both
    runs = policy.runtime.input != "off" or policy.runtime.output != "off" or override or any(wanted.values())
    moderator = await asyncio.to_thread(get_moderator, settings) if runs else None
    mod = RuntimeModeration.for_request(policy.runtime, override, moderator, db, principal, model_id)
    stricter = {}
    for side, mode in wanted.items():
        level = "block" if mode == "block" else "flag" if mode == "score" else "off"
        if _LEVEL[level] > _LEVEL[getattr(mod.policy, side)]:
            stricter[side] = level
    if stricter:
        mod.policy = mod.policy.model_copy(update=stricter)
    return mod


def _results(moderator, texts: list[str]) -> dict:
    """OpenAI's `moderation_results` object for `texts` (one result per text)."""
    results = [
        {**r.model_dump(mode="json", by_alias=True), "model": moderator.model, "type": "moderation_result"}
        for r in moderator.moderate(texts)
    ]
    return {"type": "moderation_results", "model": moderator.model, "results": results}


def _wants_report(mod: RuntimeModeration, body: ChatCompletionRequest) -> bool:
    """OpenAI's `moderation` parameter asks for scores; scoring costs a second classifier pass, which
    requests that did not ask should not pay."""
    return (
        body.moderation is not None and mod.moderator is not None and not mod.policy.input == mod.policy.output == "off"
    )


async def _moderation_report(mod: RuntimeModeration, body: ChatCompletionRequest, answers: list[str]) -> dict:
    """The response's `moderation`: scores of the input and of each answer (a side that is off for
    this request says so, as OpenAI's error object)."""
    from tunegate.catalog.template import content_text

    text = "\n".join(content_text(m.content) for m in body.messages if m.role in ("user", "system"))
    off = {"type": "error", "code": "moderation_off", "message": "Moderation of this side is off for this request."}
    return {
        "input": await asyncio.to_thread(_results, mod.moderator, [text]) if mod.policy.input != "off" else off,
        "output": await asyncio.to_thread(_results, mod.moderator, answers) if mod.policy.output != "off" else off,
    }


def _answer_text(content: str | None, calls) -> str:
    """What an answer says, tool calls included (their names and arguments are output too)."""
    parts = [content or ""] + [f"{c.function.name} {c.function.arguments or ''}" for c in calls or []]
    return "\n".join(p for p in parts if p)


async def _report_on_last_chunk(mod: RuntimeModeration, body: ChatCompletionRequest, chunks):
    """A stream's `moderation`: on the chunk that finishes the last choice, scored on the text the
    client was sent (after output moderation), so a streaming client gets what a JSON one gets."""
    texts: dict[int, list[str]] = {}
    open_choices = body.n or 1
    try:
        async for chunk in chunks:
            for choice in chunk.choices:
                delta = choice.delta
                texts.setdefault(choice.index, []).append(delta.content or "")
                for call in delta.tool_calls or []:
                    f = call.function
                    texts[choice.index].append(((f.name + " ") if f and f.name else "") + ((f and f.arguments) or ""))
                if choice.finish_reason is not None:
                    open_choices -= 1
                    if open_choices == 0:
                        answers = ["".join(texts.get(i, [])) for i in range(body.n or 1)]
                        chunk.moderation = await _moderation_report(mod, body, answers)
            yield chunk
    finally:
        await chunks.aclose()


async def _prepare(app, principal, body: ChatCompletionRequest):
    resolved = await asyncio.to_thread(resolve, app.state.db, app.state.settings, principal, body.model)
    model = ServableModel(resolved.id, resolved.base, resolved.adapter_path)
    moderation = await _moderation(app, principal, body, model.id)
    await moderation.check_input(
        [m.model_dump() for m in body.messages], tools=[t.model_dump() for t in body.tools or []]
    )
    return model, moderation


async def complete(app, principal, body: ChatCompletionRequest, caller: Caller | None = None) -> ChatCompletion:
    """One non-streaming chat completion with everything the route enforces (model access, runtime
    moderation); the Batch API runs its chat lines through this (without `caller`: batch lines are
    not held to the per-key concurrency and token limits of live requests)."""
    model, moderation = await _prepare(app, principal, body)
    completion = await moderation.check_completion(await app.state.chat.create(body, model, caller))
    if _wants_report(moderation, body):
        answers = [_answer_text(c.message.content, c.message.tool_calls) for c in completion.choices]
        completion.moderation = await _moderation_report(moderation, body, answers)
    return completion


@router.get("/serving/stats", include_in_schema=False)
async def serving_stats(request: Request, admin: AdminDep) -> dict:
    """The engine's counters per base model (admin keys): steps, batch sizes, cancelled sequences."""
    return {"object": "serving.stats", "models": request.app.state.chat.engine.stats()}


DISCONNECT_POLL_S = 0.25


async def _unless_disconnected(request: Request, work):
    """Await `work`, cancelling it when the client goes away first: a JSON response is only sent at
    the end, so nothing else would notice, and the generation would hold its batch slots to the end."""
    task = asyncio.ensure_future(work)
    gone: asyncio.Event | None = request.scope.get(GONE)
    waiter = asyncio.ensure_future(gone.wait()) if gone is not None else None
    try:
        while True:
            done, _ = await asyncio.wait(
                {task} | ({waiter} if waiter else set()), timeout=DISCONNECT_POLL_S, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return task.result()
            if (waiter is not None and waiter in done) or (waiter is None and await request.is_disconnected()):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    finally:
        task.cancel()
        if waiter is not None:
            waiter.cancel()


@router.post("/chat/completions", response_model=ChatCompletion, response_model_exclude_none=False)
async def chat_completions(body: ChatCompletionRequest, request: Request, principal: PrincipalDep):
    caller = Caller(principal.org_id, principal.key_id)
    # Interactive requests being prepared or answered (a stream until its generation is queued): the
    # Batch API starts no new line while any are.
    live = request.app.state.live_chats = getattr(request.app.state, "live_chats", Counter())
    live["n"] += 1
    try:
        if not body.stream:
            return await _unless_disconnected(request, complete(request.app, principal, body, caller))
        model, moderation = await _prepare(request.app, principal, body)
        service: ChatService = request.app.state.chat
        # 400/429 are raised here, before the stream starts; output is held back until moderated.
        chunks = moderation.filter_stream(await service.stream(body, model, caller))
        if _wants_report(moderation, body):
            chunks = _report_on_last_chunk(moderation, body, chunks)
    finally:
        live["n"] -= 1

    async def events():
        try:
            async for chunk in chunks:
                yield {"data": json.dumps(chunk.to_dict(), ensure_ascii=False)}
        except TunegateError as exc:  # after the first byte an error can only travel inside the stream
            yield {"data": json.dumps(exc.to_dict())}
        finally:
            await chunks.aclose()  # a client that went away frees its batch slot
        yield {"data": "[DONE]"}

    return EventSourceResponse(events(), sep="\n")
