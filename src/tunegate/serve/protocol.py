"""Chat-completions wire objects: the request and the `ChatCompletion` / `ChatCompletionChunk`
responses, with OpenAI's field names (openai-python's `types/chat/` is the reference).

Owns the shape of the API and the context-free validation of a request (ranges, roles, types).
Does not own anything that needs the model: context-length checks and prompt rendering are in
`serve/service.py`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunegate.errors import InvalidRequestError
from tunegate.text import check_text

ROLES = ("system", "user", "assistant", "tool", "developer", "function")
MAX_N = 128  # OpenAI's own limit on `n`
MAX_STOP = 4  # OpenAI accepts up to 4 stop sequences
MAX_TOOLS = 128  # OpenAI's limit on `tools`
MAX_LOGIT_BIAS = 300  # OpenAI's limit on `logit_bias` entries

# OpenAI chat parameters tunegate does not implement: each answers 400 `unsupported_parameter`
# unless it carries a value that asks for nothing (so an SDK that sends defaults keeps working).
UNSUPPORTED = {
    "audio": "audio output is not supported",
    "modalities": 'only text output is supported (`["text"]`)',
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "the served models are not reasoning models",
    "verbosity": "the served models do not support `verbosity`",
    "functions": "the deprecated `functions` are not supported; use `tools`",
    "function_call": "the deprecated `function_call` is not supported; use `tool_choice`",
    "store": "stored completions are not supported (`store` must be false)",
    "service_tier": "only the `auto` and `default` service tiers exist here",
}
_HARMLESS = {"modalities": (["text"],), "store": (False,), "service_tier": ("auto", "default")}


class ContentPart(BaseModel):
    """`{"type": "text", "text": ...}`: the models served here read text only."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str
    """JSON text, as the model wrote it."""


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of the conversation. Extra keys are kept."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[ContentPart] | None = None
    """A string, or a list of `{"type": "text", "text": ...}` parts."""
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    """An assistant's earlier tool calls (rendered into the prompt)."""
    function_call: FunctionCall | None = None
    """The deprecated single-function form of `tool_calls`."""
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    """Send one more chunk before `[DONE]` with `usage` and empty `choices`."""


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    """Letters, digits, `_` and `-`, at most 64 characters (OpenAI's rule)."""
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON Schema object; omitted means no arguments."""
    strict: bool | None = None


class ChatTool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("`json_schema` is required when `type` is `json_schema`")
        return self


class ModerationMode(BaseModel):
    mode: Literal["score", "block"]


class ModerationPolicy(BaseModel):
    input: ModerationMode | None = None
    output: ModerationMode | None = None


class OpenAIModeration(BaseModel):
    """OpenAI's `moderation` parameter: run moderation on input and output, report (`score`) or block."""

    model: str
    policy: ModerationPolicy | None = None


class TunegateExtension(BaseModel):
    """Our own request options, kept apart from OpenAI's names."""

    model_config = ConfigDict(extra="forbid")

    moderation: dict[str, Any] | None = None
    """Admin only: change the organisation's runtime policy for this request
    (`{"input": "off|flag|block", "output": "off|flag|block"}`)."""


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`. Unknown fields are accepted (and logged by the router)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data):
        return check_text(data)  # raises 400 naming the field; not a ValueError, so pydantic lets it through

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
    logit_bias: dict[str, float] | None = None
    """Token id (as a string) -> bias in [-100, 100] added to the logits before sampling; at most 300."""
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    moderation: OpenAIModeration | None = None
    tunegate: TunegateExtension | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased, got {len(v)}")
        for key, bias in v.items():
            if not key.isdigit():
                raise ValueError(f'keys are token ids written as strings (e.g. "1234"), got {key[:32]!r}')
            if not -100 <= bias <= 100:
                raise ValueError(f"bias of token {key} is {bias}; biases must be between -100 and 100")
        return v

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


def check_supported(request: ChatCompletionRequest) -> None:
    """400 `unsupported_parameter` for an OpenAI parameter this server does not implement, and 400s
    for tool settings that contradict each other (each naming its field)."""
    for name, why in UNSUPPORTED.items():
        value = (request.model_extra or {}).get(name)
        if value is None or value in _HARMLESS.get(name, ()):
            continue
        raise InvalidRequestError(
            f"Unsupported parameter: `{name}`: {why}. Remove it from the request.",
            param=name,
            code="unsupported_parameter",
        )
    names = [t.function.name for t in request.tools or []]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidRequestError(
                f"`tools` has two functions named `{name}`; names must be unique.",
                param=f"tools[{i}].function.name",
                code="invalid_value",
            )
    if request.tool_choice is not None and request.tool_choice != "none" and not names:
        raise InvalidRequestError(
            "`tool_choice` is only allowed when `tools` are given.", param="tool_choice", code="invalid_value"
        )
    if request.parallel_tool_calls is not None and not names:
        raise InvalidRequestError(
            "`parallel_tool_calls` is only allowed when `tools` are given.",
            param="parallel_tool_calls",
            code="invalid_value",
        )
    if isinstance(request.tool_choice, NamedToolChoice) and request.tool_choice.function.name not in names:
        raise InvalidRequestError(
            f"`tool_choice` names the function `{request.tool_choice.function.name}`, which "
            f"is not in `tools` ({', '.join(names)}).",
            param="tool_choice.function.name",
            code="invalid_value",
        )


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


class FunctionCall(BaseModel):
    name: str
    arguments: str
    """The arguments as a JSON string (always valid JSON here: it is generated under a grammar)."""


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class Choice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    moderation: dict[str, Any] | None = None
    """OpenAI's moderation results for the input and the output, when moderation ran."""


class ToolCallDeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction | None = None


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    """Only on the extra last chunk sent when `stream_options.include_usage` is true."""
    system_fingerprint: str | None = None
    moderation: dict[str, Any] | None = None
    """Only on the chunk that finishes the last choice, when the request's `moderation` asked for scores
    (the same object as `ChatCompletion.moderation`)."""

    def to_dict(self) -> dict:
        """OpenAI's exact chunk JSON: deltas carry only the keys they set; `usage` only when sent."""
        d = self.model_dump(mode="json")
        for c in d["choices"]:
            c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
            for call in c["delta"].get("tool_calls", []):
                for k in [k for k, v in call.items() if v is None]:
                    del call[k]
                if call.get("function"):
                    call["function"] = {k: v for k, v in call["function"].items() if v is not None}
        for key in ("usage", "moderation"):
            if d[key] is None:
                del d[key]
        return d
