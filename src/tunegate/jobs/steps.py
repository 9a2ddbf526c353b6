"""Pipeline steps: the hooks a later stage registers to act inside a job's flow.

A job passes three points where other stages may take part:

- `before_queue`: once its files are valid, before it is queued (safety screens the data here);
- `prepare_data`: in the worker, before training (safety mixes its refusal examples in here);
- `after_training`: once the adapter is trained, before its model is served (the safety gate).

A step gets a read-only `JobContext` (with `emit` for its typed events) and returns a
`Decision`; the jobs stage alone writes job rows and acts on the decision (fail the job with the
decision's error, keep the step's `record` in `job.safety`). Steps are registered in the
`job_steps` plugin registry (`tunegate.plugins`), so jobs/ never imports the stages that hook in.
Reinforcement jobs need a grader, which a later stage owns too: `RewardGraders` is what that
stage registers in the `reward_graders` registry (graders/ does), to check a job's grader against
its files when the job is created and to score sampled answers in the worker.

Owns the protocols only; the steps themselves live with their stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tunegate.db import Database
from tunegate.jobs.lifecycle import EventLevel, EventType
from tunegate.settings import Settings

Phase = Literal["before_queue", "prepare_data", "after_training"]


class Emit(Protocol):
    def __call__(
        self, message: str, *, type: EventType = "message", data: Any = None, level: EventLevel = "info"
    ) -> None: ...


@dataclass(frozen=True)
class JobContext:
    """What a step may know about the job. Rows are not handed out: steps never write them."""

    job_id: str
    org_id: str
    model: str
    seed: int
    options: dict[str, Any]
    training_path: Path
    work_dir: Path  # the job's artifact folder, where steps keep their reports
    settings: Settings
    db: Database  # for the step's own tables (policies, audit), never the job's rows
    emit: Emit


@dataclass(frozen=True)
class Decision:
    """A step's verdict. `allow=False` fails the job with `code` / `message` / `param`."""

    allow: bool = True
    code: str | None = None
    message: str = ""
    param: str | None = None
    record: dict[str, Any] | None = None  # kept as job.safety[step name]
    training_path: Path | None = None  # prepare_data: the file to train on instead


@dataclass(frozen=True)
class Step:
    """A named step of one phase. `run(ctx, **inputs)`: after_training gets `adapter_dir` and `model_id`."""

    name: str
    phase: Phase
    run: Callable[..., Decision]
    extra: dict[str, Any] = field(default_factory=dict)


class RewardGraders(Protocol):
    def check(
        self, grader: dict[str, Any], *, settings: Settings, files: Sequence[tuple[str, str | Path]], param: str
    ) -> dict[str, Any]:
        """The grader in its stored form; raises InvalidRequestError (naming `param`...) when it cannot
        run or names an `{{item.<field>}}` some row of `files` ((param, path) pairs) lacks."""
        ...

    def reward_fn(
        self, grader: dict[str, Any], *, settings: Settings
    ) -> Callable[[list[str], list[dict[str, Any]]], Any]:
        """answers, items -> (rewards, batch metrics), as train/rft.py's `RewardFn`."""
        ...


def reward_graders() -> RewardGraders:
    from tunegate.plugins import REWARD_GRADERS

    provider: RewardGraders = REWARD_GRADERS.get(REWARD_GRADERS.names()[0])
    return provider


def steps(phase: Phase) -> list[Step]:
    """The registered steps of `phase`, in registration order."""
    from tunegate.plugins import JOB_STEPS

    return [s for s in JOB_STEPS.all() if s.phase == phase]
