"""Fine-tuning job objects, shaped like openai-python's `types/fine_tuning` (FineTuningJob,
FineTuningJobEvent, FineTuningJobCheckpoint) and the create request with OpenAI's ranges."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tunegate.jobs.lifecycle import EventLevel, EventType, JobStatus
from tunegate.train.config import HYPERPARAMETER_BOUNDS

Auto = Literal["auto"]
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SupervisedHyperparameters(BaseModel):
    """Each `auto` or a number within `HYPERPARAMETER_BOUNDS` (train/config.py, which the trainer checks too)."""

    model_config = ConfigDict(extra="allow")
    n_epochs: Auto | int = Field("auto", description=f"{HYPERPARAMETER_BOUNDS['n_epochs'].describe()}, or `auto`.")
    batch_size: Auto | int = Field("auto", description=f"{HYPERPARAMETER_BOUNDS['batch_size'].describe()}, or `auto`.")
    learning_rate_multiplier: Auto | float = Field(
        "auto", description=f"{HYPERPARAMETER_BOUNDS['learning_rate_multiplier'].describe()}, or `auto`."
    )

    @field_validator("n_epochs", "batch_size", "learning_rate_multiplier")
    @classmethod
    def _within_bounds(cls, v: Any, info: ValidationInfo) -> Any:
        bound = HYPERPARAMETER_BOUNDS[str(info.field_name)]
        if v != "auto" and not bound.contains(v):
            raise ValueError(f"{info.field_name} must be `auto` or {bound.describe()}")
        return v


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="allow")
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Auto | float = Field("auto", description="Above 0 and at most 2, or `auto` (0.1).")

    @field_validator("beta")
    @classmethod
    def _beta(cls, v):
        if v != "auto" and not 0 < v <= 2:
            raise ValueError("beta must be `auto` or a number above 0 and at most 2")
        return v


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="allow")
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class ReinforcementHyperparameters(SupervisedHyperparameters):
    """OpenAI's `ReinforcementHyperparameters`; the rules for "auto" are in train/config.py."""

    compute_multiplier: Auto | float = Field("auto", description="Scales the answers sampled per prompt (4 x it).")
    eval_interval: Auto | int = Field("auto", description="Training steps between held-out reward checks.")
    eval_samples: Auto | int = Field("auto", description="Answers per held-out prompt (`auto`: one greedy answer).")
    reasoning_effort: str = Field("default", description='Only "default": these base models do not reason.')


class ReinforcementMethod(BaseModel):
    model_config = ConfigDict(extra="allow")
    grader: dict[str, Any]
    """A grader as `/v1/fine_tuning/alpha/graders/validate` takes it (string_check, text_similarity,
    python, multi); `{{item.<field>}}` reads the training row's own fields."""
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class JobOptions(BaseModel):
    """Our extension, `tunegate: {...}` in the create body: LoRA knobs and (admin only) safety switches."""

    model_config = ConfigDict(extra="forbid")
    lora_r: int | None = Field(None, ge=1, le=256)
    lora_alpha: float | None = Field(None, gt=0, le=1024)
    lora_dropout: float | None = Field(None, ge=0, lt=1)
    target_modules: list[str] | None = Field(None, min_length=1, max_length=32)
    max_seq_len: int | None = Field(None, ge=16, le=131072)
    n_workers: int | None = Field(None, ge=1, le=64)
    """Data-parallel ranks for this job (torch.distributed; each trains a slice of every batch, same result)."""
    quantization: Literal["nf4"] | None = None
    """QLoRA: train LoRA on a 4-bit NF4 base (CUDA + bitsandbytes; 400 `quantization_unavailable` elsewhere)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in backward: long contexts in less memory, ~30% slower steps."""
    safety_mixing: bool | None = None
    """Admin only when false: mix the project's refusal examples into the data (default on)."""
    skip_screening: bool = False
    """Admin only: skip training-data screening for this job (audited)."""

    def admin_only(self) -> list[str]:
        return [
            name
            for name, on in (("safety_mixing", self.safety_mixing is False), ("skip_screening", self.skip_screening))
            if on
        ]


class JobCreate(BaseModel):
    """`POST /v1/fine_tuning/jobs`. Unknown fields are accepted and logged."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., min_length=1, max_length=256)
    training_file: str = Field(..., min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    hyperparameters: SupervisedHyperparameters | None = None
    method: Method | None = None
    integrations: list[Any] | None = None
    tunegate: JobOptions | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v):
        if v is not None and not SUFFIX_RE.match(v):
            raise ValueError("suffix must be 1-64 characters of letters, digits, '-', '_' or '.'")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("metadata holds at most 16 key-value pairs")
        for k, val in v.items():
            if len(k) > 64 or len(val) > 512:
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return v


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    """OpenAI's three, plus the method's own once resolved (DPO `beta`; reinforcement `compute_multiplier`, ...)."""

    model_config = ConfigDict(extra="allow")
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    n_epochs: Auto | int | None = None


class FineTuningJob(BaseModel):
    id: str
    """`ftjob-...`"""
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    """Why the job failed (`invalid_training_file`, `unsafe_training_file`, `unsafe_model`, ...)."""
    fine_tuned_model: str | None = None
    """`ft:<base>:<org>:<suffix>:<id>` once the job succeeded."""
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    """Resolved numbers once training starts; `auto` before."""
    model: str
    organization_id: str
    result_files: list[str] = []
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = None
    """Our extension: the requested suffix."""


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: EventLevel
    message: str
    """For people; programs read `type` and `data`."""
    data: Any = None
    type: EventType = "message"
    """OpenAI's `message` and `metrics`, plus ours: `status` (data: status, previous), `checkpoint`
    (data: step, fine_tuned_model_checkpoint, metrics) and `moderation_checks` (data: check, ...)."""


class CheckpointMetrics(BaseModel):
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
