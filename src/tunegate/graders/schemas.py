"""Grader objects and the grader API's request/response bodies, shaped like openai-python's
`types/graders` (StringCheckGrader, TextSimilarityGrader, PythonGrader, ScoreModelGrader,
LabelModelGrader, MultiGrader) and `types/fine_tuning/alpha` (GraderRunParams, GraderRunResponse,
GraderValidateResponse). Unknown fields are accepted (newer SDKs keep working)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SIMILARITY_METRICS = (
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)


class _Grader(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., min_length=1, max_length=256)
    """The name of the grader."""


class StringCheckGrader(_Grader):
    type: Literal["string_check"]
    input: str
    """The input text; may hold `{{sample.output_text}}`-style templates."""
    reference: str
    """The reference text; may hold templates."""
    operation: Literal["eq", "ne", "like", "ilike"]
    """`eq`/`ne` exact (in)equality; `like` the input contains the reference; `ilike` the same ignoring case."""


class TextSimilarityGrader(_Grader):
    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: Literal[
        "cosine",
        "fuzzy_match",
        "bleu",
        "gleu",
        "meteor",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ]
    """Similarity in [0, 1]; `cosine` uses the packaged all-MiniLM-L6-v2 sentence encoder."""


class PythonGrader(_Grader):
    type: Literal["python"]
    source: str = Field(..., max_length=256_000)
    """Python source defining `grade(sample, item) -> float`."""
    image_tag: str | None = None


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant", "system", "developer"]
    content: Any
    """A string or content parts with `text`; templates allowed."""
    type: Literal["message"] | None = None


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    max_completions_tokens: int | None = Field(None, ge=1, le=4096)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    reasoning_effort: str | None = None


class ScoreModelGrader(_Grader):
    type: Literal["score_model"]
    model: str
    """A model this tunegate serves (base, `ft:` or checkpoint) that the caller may use."""
    input: list[InputMessage] = Field(..., min_length=1)
    range: list[float] | None = None
    """[low, high] of the score; default [0, 1]."""
    sampling_params: SamplingParams | None = None


class LabelModelGrader(_Grader):
    type: Literal["label_model"]
    model: str
    input: list[InputMessage] = Field(..., min_length=1)
    labels: list[str] = Field(..., min_length=1)
    passing_labels: list[str] = Field(..., min_length=1)


SingleGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
    Field(discriminator="type"),
]


class MultiGrader(_Grader):
    type: Literal["multi"]
    graders: dict[str, SingleGrader] | SingleGrader
    """Graders by the name the formula uses (a single grader is named by its `name`)."""
    calculate_output: str = Field(..., min_length=1, max_length=2000)
    """A formula over the graders' scores, e.g. `0.5 * fmt + 0.5 * sim` (+ - * / ** min max abs sqrt log exp
    floor ceil)."""

    def named(self) -> dict[str, Any]:
        return self.graders if isinstance(self.graders, dict) else {self.graders.name: self.graders}


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader | MultiGrader,
    Field(discriminator="type"),
]


class GraderRunRequest(BaseModel):
    """`POST /v1/fine_tuning/alpha/graders/run`."""

    model_config = ConfigDict(extra="allow")
    grader: Grader
    model_sample: str
    """The model's answer: fills `{{sample.output_text}}` (and `{{sample.output_json...}}` when it is JSON)."""
    item: Any = None
    """The dataset row: fills `{{item.field}}`."""


class GraderValidateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    grader: Grader


class GraderValidateResponse(BaseModel):
    grader: Grader | None = None


class RunErrors(BaseModel):
    formula_parse_error: bool = False
    invalid_variable_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_server_error: bool = False
    model_grader_server_error_details: str | None = None
    other_error: bool = False
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False


class RunMetadata(BaseModel):
    errors: RunErrors
    execution_time: float
    name: str
    sampled_model_name: str | None = None
    scores: dict[str, Any]
    token_usage: int | None = None
    type: str


class GraderRunResponse(BaseModel):
    metadata: RunMetadata
    model_grader_token_usage_per_model: dict[str, Any]
    reward: float
    sub_rewards: dict[str, Any]
