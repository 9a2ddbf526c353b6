"""Converts every error to OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.

This is the only place HTTP errors are built: stages raise `tunegate.errors` exceptions; unknown
routes (404), wrong methods (405), request validation (400 with `param`) and unexpected failures
(500, no traceback leaked) are converted here too.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunegate.errors import TunegateError, from_validation_errors

log = logging.getLogger("tunegate.api")

_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_value",
    429: "rate_limit_exceeded",
}


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    # Every error carries a machine-readable code, even where a stage raised without one.
    body = {"error": {"message": message, "type": type_, "param": param, "code": code or _HTTP_CODES.get(status)}}
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(TunegateError)
    async def _tunegate(_: Request, exc: TunegateError):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 429 and not any(k.lower() == "retry-after" for k in headers):
            headers["retry-after"] = "1"  # the SDK honours it instead of its own backoff
        return error_response(
            exc.status_code, exc.message, type_=exc.type, param=exc.param, code=exc.code, headers=headers or None
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(
                400,
                "We could not parse the JSON body of your request. Send valid UTF-8 JSON "
                "with `Content-Type: application/json`.",
                code="invalid_json",
            )
        err = from_validation_errors(errors)
        return error_response(400, err.message, param=err.param, code=err.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            msg = f"Invalid URL ({request.method} {request.url.path}). See /openapi.json for the routes."
        elif exc.status_code == 405:
            msg = f"Method {request.method} is not allowed on {request.url.path}."
        elif exc.status_code == 400 and "parsing the body" in str(exc.detail):
            return error_response(
                400,
                "We could not parse the body of your request. Send valid UTF-8 JSON with "
                "`Content-Type: application/json`.",
                code="invalid_json",
            )
        else:
            msg = str(exc.detail)
        return error_response(
            exc.status_code, msg, code=_HTTP_CODES.get(exc.status_code), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # This handler runs outside the guard middleware, so it sets the guard's headers itself.
        request_id = request.scope.get("state", {}).get("request_id", "")
        log.exception("unexpected error on %s %s (request %s)", request.method, request.url.path, request_id)
        return error_response(
            500,
            "The server had an error while processing your request. It was logged; "
            "retry, and report it if it persists.",
            type_="server_error",
            code="internal_error",
            headers={"x-request-id": request_id, "x-content-type-options": "nosniff"},
        )
