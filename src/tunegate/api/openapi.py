"""The OpenAPI document as the server really behaves, so schema-driven clients and fuzzers can trust it.

FastAPI's generated document claims `422` validation errors (we answer `400`), says nothing of the
errors every route can return, of bearer authentication, of the policy body (read by hand) or of
the SSE stream of chat completions. This module corrects those, once, when the document is built.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            routes=app.routes,
            description="OpenAI-compatible fine-tuning with server-enforced safety. Every `/v1/` route "
            "needs `Authorization: Bearer <key>`; errors are OpenAI-shaped.",
        )
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["Error"] = ERROR_SCHEMA
        schemas.update(getattr(app.state, "openapi_components", None) or {})  # bodies routes read by hand
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        error = {
            "description": "An OpenAI-shaped error (bad input, authentication, permission, unknown id, "
            "conflict, body too large or too slow, rate limit).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for path, operations in doc.get("paths", {}).items():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                responses["4XX"] = error
                if path.startswith("/v1/"):
                    op["security"] = [{"bearer": []}]
        chat = doc["paths"].get("/v1/chat/completions", {}).get("post")
        if chat:
            chat["responses"]["200"].setdefault("content", {})["text/event-stream"] = {
                "schema": {
                    "type": "string",
                    "description": "`data: <ChatCompletionChunk JSON>` events, then "
                    "`data: [DONE]`, when `stream` is true.",
                }
            }
        app.openapi_schema = doc
        return doc

    app.openapi = openapi
