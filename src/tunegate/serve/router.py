"""`POST /v1/chat/completions`: JSON, or Server-Sent Events when `stream` is true.

Owns the HTTP edge of serving only: authentication and model lookup come from `api/deps.py`, the
protocol logic from `serve/service.py`, SSE framing from sse-starlette. `setup(app)` creates the
one engine of the server and registers it as a service (started and stopped with the app).
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, FastAPI, Request
from sse_starlette.sse import EventSourceResponse

from tunegate.api.deps import PrincipalDep, resolve_model
from tunegate.errors import TunegateError
from tunegate.safety.jobs import org_policy
from tunegate.safety.moderation import get_moderator
from tunegate.safety.runtime import RuntimeModeration
from tunegate.serve.engine import ServableModel
from tunegate.serve.protocol import ChatCompletion, ChatCompletionRequest
from tunegate.serve.service import ChatService

router = APIRouter(prefix="/v1", tags=["chat"])


def setup(app: FastAPI) -> None:
    from tunegate.serve.hf_engine import HFEngine

    engine = HFEngine(app.state.settings)
    app.state.chat = ChatService(engine)
    app.state.services.append(engine)


async def _moderation(request: Request, principal, body: ChatCompletionRequest, model_id: str) -> RuntimeModeration:
    """The organisation's runtime moderation for this request (enforced for every model)."""
    settings, db = request.app.state.settings, request.app.state.db
    policy = await asyncio.to_thread(org_policy, db, principal.org_id)
    override = (body.model_extra or {}).get("moderation")
    moderator = await asyncio.to_thread(get_moderator, settings) if (policy.runtime.input != "off" or
                                                                     policy.runtime.output != "off" or override) else None
    return RuntimeModeration.for_request(policy.runtime, override, moderator, db, principal, model_id)


@router.post("/chat/completions", response_model=ChatCompletion, response_model_exclude_none=False)
async def chat_completions(body: ChatCompletionRequest, request: Request, principal: PrincipalDep):
    resolved = await asyncio.to_thread(resolve_model, request, principal, body.model)
    model = ServableModel(resolved.id, resolved.base, resolved.adapter_path)
    service: ChatService = request.app.state.chat
    moderation = await _moderation(request, principal, body, model.id)
    await moderation.check_input([m.model_dump() for m in body.messages])
    if not body.stream:
        return await moderation.check_completion(await service.create(body, model))
    # 400/429 are raised here, before the stream starts; output is held back until moderated.
    chunks = moderation.filter_stream(await service.stream(body, model))

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
