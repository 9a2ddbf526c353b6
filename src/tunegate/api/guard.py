"""The ASGI guard in front of every route: who is calling, how big and how slow a body may be, and
the headers every response carries.

Owns, for each HTTP request, before any route runs:
- authentication of every `/v1/` request before one byte of its body is read (a request without a
  valid key costs a header parse and one indexed lookup, never a body);
- the body size limit, enforced on the bytes as they arrive (a chunked body has no length to check
  up front) and up front on `Content-Length`;
- a body-read timeout: a client that stops sending for `body_idle_timeout_seconds`, or has not
  finished after `body_total_timeout_seconds`, gets 408 and its connection closed;
- `x-request-id` (the client's own, when it is a plain token, else a new one), `X-Content-Type-Options:
  nosniff` on every response, and `x-should-retry: false` on 409 (the SDK would otherwise retry a
  conflict that cannot resolve by itself).
Header timeouts (a client that never finishes its headers) live in `api/http.py`, one layer down.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import anyio

from tunegate.api.errors import error_response
from tunegate.auth import authenticate
from tunegate.errors import TunegateError

MAX_JSON_BODY = 16 * 1024 * 1024  # uploads stream separately and have their own limit
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class Guard:
    def __init__(self, app, settings, db):
        self.app, self.settings, self.db = app, settings, db

    def body_limit(self, path: str) -> int:
        streamed = path == "/v1/files" or path.startswith("/v1/uploads/")  # files, upload parts
        return self.settings.max_upload_bytes + 1024 * 1024 if streamed else MAX_JSON_BODY

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        responded = False  # the guard answered itself; whatever the app sends afterwards is dropped
        app_started = False

        async def send_wrapped(message):
            nonlocal responded, app_started
            if message["type"] == "http.response.start":
                if responded:
                    return
                app_started = True
                extra = [(b"x-request-id", request_id.encode()), (b"x-content-type-options", b"nosniff")]
                if message["status"] == 409:
                    extra.append((b"x-should-retry", b"false"))
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": list(message.get("headers", [])) + [(k, v) for k, v in extra if k not in names],
                }
            elif responded and message["type"] == "http.response.body":
                return
            await send(message)

        async def answer(response) -> None:
            nonlocal responded
            if app_started:  # too late for a status: the connection just closes
                return
            await response(scope, _no_body, send_wrapped)
            responded = True

        path = scope.get("path", "")
        limit = self.body_limit(path)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            return await answer(
                error_response(
                    413,
                    f"The request body is {int(length)} bytes; the limit is {limit} bytes.",
                    code="payload_too_large",
                    headers={"connection": "close"},
                )
            )
        if path.startswith("/v1/"):
            try:
                principal = await anyio.to_thread.run_sync(authenticate, self.db, headers.get("authorization"))
            except TunegateError as exc:
                return await answer(
                    error_response(
                        exc.status_code,
                        exc.message,
                        type_=exc.type,
                        param=exc.param,
                        code=exc.code,
                        headers={"connection": "close"},
                    )
                )
            scope["state"]["principal"] = principal

        received = 0
        body_done = False
        started = time.monotonic()
        idle = self.settings.body_idle_timeout_seconds
        total = self.settings.body_total_timeout_seconds

        async def receive_guarded():
            nonlocal received, body_done
            if body_done or responded:
                return await receive()
            remaining = total - (time.monotonic() - started)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, min(idle, remaining)))
            except TimeoutError:
                await answer(
                    error_response(
                        408,
                        f"The request body did not arrive in time (no data for {idle:g} s, "
                        f"or not complete after {total:g} s). Send the body without pauses.",
                        code="request_timeout",
                        headers={"connection": "close"},
                    )
                )
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    await answer(
                        error_response(
                            413,
                            f"The request body is over the limit of {limit} bytes.",
                            code="payload_too_large",
                            headers={"connection": "close"},
                        )
                    )
                    return {"type": "http.disconnect"}
                if not message.get("more_body", False):
                    body_done = True
            else:
                body_done = True
            return message

        try:
            await self.app(scope, receive_guarded, send_wrapped)
        except Exception:
            if not responded:
                raise  # the app's own error handling already answered, or this is a real failure


async def _no_body():
    return {"type": "http.request", "body": b"", "more_body": False}
