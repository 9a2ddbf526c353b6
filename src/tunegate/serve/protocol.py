"""Chat-completions wire objects: the request and the `ChatCompletion` / `ChatCompletionChunk`
responses, with OpenAI's field names (openai-python's `types/chat/` is the reference).

Owns the shape of the API and the context-free validation of a request (ranges, roles, types).
Does not own anything that needs the model: context-length checks and prompt rendering are in
`serve/service.py`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunegate.errors import InvalidRequestError

ROLES = ("system", "user", "assistant", "tool", "developer", "function")
MAX_N = 128  # OpenAI's own limit on `n`
MAX_STOP = 4  # OpenAI accepts up to 4 stop sequences


class ChatMessage(BaseModel):
    """One message of the conversation. Extra keys (e.g. `tool_calls`, `name`) are kept."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None
    """A string, or a list of `{"type": "text", "text": ...}` parts."""
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    """Send one more chunk before `[DONE]` with `usage` and empty `choices`."""


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`. Unknown fields are accepted (and logged by the router)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    """0 means greedy; default 1."""
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    max_tokens: int | None = Field(default=None, ge=1)
    """Deprecated by OpenAI in favour of `max_completion_tokens`; both are honoured."""
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    """Same seed and same request -> same output (each choice has its own random generator)."""
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None
    """Not OpenAI's (vLLM's extension): keep generating past the end-of-turn token; for benchmarks."""

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list):
            if len(v) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
            if any(not s for s in v):
                raise ValueError("stop sequences must be non-empty strings")
        if v == "":
            raise ValueError("the stop sequence must be a non-empty string")
        return v

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        return self

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _param(loc: tuple) -> str | None:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p not in ("str", "list[str]", "int", "float", "bool", "list[dict[str,any]]") and not str(p).startswith(
            ("function-", "list[")
        ):
            out += ("." if out else "") + str(p)
    return out or None


def parse_request(body: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; every problem is reported at once, the first one's field as `param`."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
        parts = [f"`{_param(tuple(e['loc'])) or 'body'}`: {e['msg']}" for e in errors[:5]]
        raise InvalidRequestError(
            "Invalid request: " + "; ".join(parts) + ".",
            param=_param(tuple(errors[0]["loc"])) if errors else None,
            code="invalid_value",
        ) from None


# --- responses -----------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    bytes: list[int] | None = None
    """The token's UTF-8 bytes (a token may be part of a multi-byte character)."""
    logprob: float


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    bytes: list[int] | None = None
    logprob: float
    """Log-probability under the model's distribution, before temperature, top_p and penalties."""
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    """Tokens of the prompt exactly as rendered with the model's chat template."""
    completion_tokens: int
    """Tokens generated over all choices (an end-of-turn token counts)."""
    total_tokens: int


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class Choice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    """Only on the extra last chunk sent when `stream_options.include_usage` is true."""
    system_fingerprint: str | None = None

    def to_dict(self) -> dict:
        """OpenAI's exact chunk JSON: deltas carry only the keys they set; `usage` only when sent."""
        d = self.model_dump(mode="json")
        for c in d["choices"]:
            c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
        if d["usage"] is None:
            del d["usage"]
        return d
