"""Eval objects and request bodies, shaped like openai-python's `types/eval_*` and `types/evals/`
(EvalCreateParams, Eval, RunCreateParams, Run, OutputItem). Unknown fields are accepted and logged."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunegate.graders.schemas import (
    LabelModelGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)

RunStatus = Literal["queued", "in_progress", "completed", "failed", "canceled"]


def _check_metadata(v):
    if v is None:
        return v
    if len(v) > 16 or any(len(k) > 64 or len(str(val)) > 512 for k, val in v.items()):
        raise ValueError("metadata holds at most 16 pairs, keys up to 64 and values up to 512 characters")
    return v


class CustomDataSourceConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["custom"]
    item_schema: dict[str, Any]
    """JSON schema of each item (checked when a run reads its data)."""
    include_sample_schema: bool = False


class TextSimilarityCriterion(TextSimilarityGrader):
    pass_threshold: float = Field(..., ge=0, le=1)


class PythonCriterion(PythonGrader):
    pass_threshold: float | None = None


class ScoreModelCriterion(ScoreModelGrader):
    pass_threshold: float | None = None


TestingCriterion = Annotated[
    LabelModelGrader | StringCheckGrader | TextSimilarityCriterion | PythonCriterion | ScoreModelCriterion,
    Field(discriminator="type"),
]


class EvalCreate(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = Field(None, max_length=256)
    data_source_config: dict[str, Any]
    testing_criteria: list[TestingCriterion] = Field(..., min_length=1, max_length=32)
    metadata: dict[str, str] | None = None
    _metadata = field_validator("metadata")(_check_metadata)


class EvalUpdate(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    _metadata = field_validator("metadata")(_check_metadata)


class EvalObject(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    created_at: int
    data_source_config: dict[str, Any]
    """`{"type": "custom", "schema": {...}}`: the item schema, with `sample` when runs generate answers."""
    testing_criteria: list[dict[str, Any]]
    metadata: dict[str, str] | None = None


class FileContentSource(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["file_content"]
    content: list[dict[str, Any]] = Field(..., min_length=1, max_length=10_000)
    """Rows `{"item": {...}, "sample": {...}?}`."""


class FileIdSource(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["file_id"]
    id: str


Source = Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]


class TemplateMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant", "system", "developer"]
    content: Any
    type: Literal["message"] | None = None


class TemplateInput(BaseModel):
    type: Literal["template"]
    template: list[TemplateMessage] = Field(..., min_length=1)


class ItemReferenceInput(BaseModel):
    type: Literal["item_reference"]
    item_reference: str
    """e.g. `item.messages`: a list of chat messages inside each item."""


class RunSamplingParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)


class JsonlDataSource(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["jsonl"]
    source: Source


class CompletionsDataSource(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["completions"]
    source: Source
    model: str
    """Any model the caller may use: a base model, an `ft:` model or a checkpoint."""
    input_messages: Annotated[TemplateInput | ItemReferenceInput, Field(discriminator="type")]
    sampling_params: RunSamplingParams | None = None


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = Field(None, max_length=256)
    data_source: Annotated[JsonlDataSource | CompletionsDataSource, Field(discriminator="type")]
    metadata: dict[str, str] | None = None
    _metadata = field_validator("metadata")(_check_metadata)


class ResultCounts(BaseModel):
    total: int
    passed: int
    failed: int
    errored: int


class PerTestingCriteriaResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int


class PerModelUsage(BaseModel):
    model_name: str
    invocation_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0


class RunObject(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    name: str
    model: str | None
    status: RunStatus
    created_at: int
    data_source: dict[str, Any]
    error: dict[str, Any] | None
    metadata: dict[str, str] | None = None
    report_url: str
    result_counts: ResultCounts
    per_model_usage: list[PerModelUsage]
    per_testing_criteria_results: list[PerTestingCriteriaResult]


class OutputItemObject(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]
