"""Moderation API objects, shaped exactly like OpenAI's `ModerationCreateResponse`.

Owns the request/response pydantic models of `POST /v1/moderations`, the 13 categories of
`omni-moderation-latest` and request validation (`parse_moderation_input`). Does not own the
classifier that fills in the scores (`classifier.py`) or the HTTP route (`router.py`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunegate.errors import InvalidRequestError

# Order matters only for display; names and spelling are OpenAI's.
CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

DEFAULT_MODEL = "omni-moderation-latest"
# Limits that keep one request bounded; OpenAI documents similar ones.
MAX_INPUTS = 64
MAX_CHARS = 32_000


class _Categories(BaseModel):
    """One field per category; OpenAI spells them with `/` and `-`, so fields use aliases."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    harassment: Any
    harassment_threatening: Any = Field(alias="harassment/threatening")
    hate: Any
    hate_threatening: Any = Field(alias="hate/threatening")
    illicit: Any
    illicit_violent: Any = Field(alias="illicit/violent")
    self_harm: Any = Field(alias="self-harm")
    self_harm_intent: Any = Field(alias="self-harm/intent")
    self_harm_instructions: Any = Field(alias="self-harm/instructions")
    sexual: Any
    sexual_minors: Any = Field(alias="sexual/minors")
    violence: Any
    violence_graphic: Any = Field(alias="violence/graphic")


class Categories(_Categories):
    """Whether each category is flagged for this input."""

    harassment: bool
    harassment_threatening: bool = Field(alias="harassment/threatening")
    hate: bool
    hate_threatening: bool = Field(alias="hate/threatening")
    illicit: bool
    illicit_violent: bool = Field(alias="illicit/violent")
    self_harm: bool = Field(alias="self-harm")
    self_harm_intent: bool = Field(alias="self-harm/intent")
    self_harm_instructions: bool = Field(alias="self-harm/instructions")
    sexual: bool
    sexual_minors: bool = Field(alias="sexual/minors")
    violence: bool
    violence_graphic: bool = Field(alias="violence/graphic")


class CategoryScores(_Categories):
    """The classifier's score in [0, 1] for each category."""

    harassment: float
    harassment_threatening: float = Field(alias="harassment/threatening")
    hate: float
    hate_threatening: float = Field(alias="hate/threatening")
    illicit: float
    illicit_violent: float = Field(alias="illicit/violent")
    self_harm: float = Field(alias="self-harm")
    self_harm_intent: float = Field(alias="self-harm/intent")
    self_harm_instructions: float = Field(alias="self-harm/instructions")
    sexual: float
    sexual_minors: float = Field(alias="sexual/minors")
    violence: float
    violence_graphic: float = Field(alias="violence/graphic")


class CategoryAppliedInputTypes(_Categories):
    """Which input types each category was applied to (tunegate moderates text only)."""

    harassment: list[Literal["text"]]
    harassment_threatening: list[Literal["text"]] = Field(alias="harassment/threatening")
    hate: list[Literal["text"]]
    hate_threatening: list[Literal["text"]] = Field(alias="hate/threatening")
    illicit: list[Literal["text"]]
    illicit_violent: list[Literal["text"]] = Field(alias="illicit/violent")
    self_harm: list[Literal["text", "image"]] = Field(alias="self-harm")
    self_harm_intent: list[Literal["text", "image"]] = Field(alias="self-harm/intent")
    self_harm_instructions: list[Literal["text", "image"]] = Field(alias="self-harm/instructions")
    sexual: list[Literal["text", "image"]]
    sexual_minors: list[Literal["text"]] = Field(alias="sexual/minors")
    violence: list[Literal["text", "image"]]
    violence_graphic: list[Literal["text", "image"]] = Field(alias="violence/graphic")


class ModerationResult(BaseModel):
    """The verdict for one input text."""

    model_config = ConfigDict(serialize_by_alias=True)

    flagged: bool
    """True when any category is flagged."""
    categories: Categories
    category_scores: CategoryScores
    category_applied_input_types: CategoryAppliedInputTypes

    @classmethod
    def from_scores(cls, scores: dict[str, float], thresholds: dict[str, float]) -> ModerationResult:
        flags = {c: bool(scores[c] >= thresholds[c]) for c in CATEGORIES}
        return cls(
            flagged=any(flags.values()),
            categories=Categories(**flags),
            category_scores=CategoryScores(**{c: float(scores[c]) for c in CATEGORIES}),
            category_applied_input_types=CategoryAppliedInputTypes(**{c: ["text"] for c in CATEGORIES}),
        )

    def scores(self) -> dict[str, float]:
        return self.category_scores.model_dump(by_alias=True)

    def flagged_categories(self) -> list[str]:
        return [c for c, v in self.categories.model_dump(by_alias=True).items() if v]


class ModerationCreateResponse(BaseModel):
    """Response of `POST /v1/moderations`."""

    id: str
    """Unique id, `modr-...`."""
    model: str
    """The moderation model that produced the results."""
    results: list[ModerationResult]
    """One result per input, in input order."""


class TextPart(BaseModel):
    """OpenAI's multi-modal input part; only `text` parts are accepted here."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ModerationCreateRequest(BaseModel):
    """Request of `POST /v1/moderations`. Unknown fields are accepted so newer SDKs keep working."""

    model_config = ConfigDict(extra="allow")

    input: str | list[str] | list[TextPart]
    """A string, an array of strings, or an array of `{"type": "text", "text": ...}` parts."""
    model: str | None = None
    """Moderation model name; any value is accepted and echoed, the configured moderator answers."""


def parse_moderation_input(value: Any) -> list[str]:
    """The texts to moderate, or an `InvalidRequestError` naming `input` and the fix."""
    if isinstance(value, ModerationCreateRequest):
        value = value.input
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                texts.append(item)
                continue
            part = item.model_dump() if isinstance(item, BaseModel) else item
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequestError(
                    f"input[{i}] has type `{kind}`; tunegate moderates text only. Send a string or "
                    '{"type": "text", "text": "..."}.',
                    param=f"input[{i}]",
                )
            texts.append(part["text"])
    else:
        raise InvalidRequestError("`input` must be a string or an array of strings.", param="input")
    if not texts:
        raise InvalidRequestError("`input` is empty. Send at least one text to moderate.", param="input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequestError(
            f"`input` has {len(texts)} items; at most {MAX_INPUTS} are accepted per request. Split it into several requests.",
            param="input",
        )
    for i, text in enumerate(texts):
        where = "input" if isinstance(value, str) else f"input[{i}]"
        if not text.strip():
            raise InvalidRequestError(f"`{where}` is an empty string. Remove it or send text to moderate.", param=where)
        if len(text) > MAX_CHARS:
            raise InvalidRequestError(
                f"`{where}` has {len(text)} characters; at most {MAX_CHARS} are accepted. Split the text into several inputs.",
                param=where,
            )
    return texts
