"""What happens to one job around training: checking its files and running the `before_queue`
steps before it is queued, and, inside the worker, the `prepare_data` steps, turning the
trainer's typed events into job events and checkpoint rows, the `after_training` steps, and
finally the result file and the fine-tuned model.

Owns the glue between the job store and the trainer and acting on the steps' decisions. The
trainer's own logic is in train/; the steps are registered by later stages (jobs/steps.py).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunegate.db import Checkpoint, Database, File, Job, Organization
from tunegate.errors import InvalidRequestError, NotFoundError
from tunegate.files.service import store_bytes, summarize_errors, validate_stored
from tunegate.ids import new_id
from tunegate.jobs import lifecycle
from tunegate.jobs.lifecycle import EventLevel, EventType, add_event, job_row, new_event, transition
from tunegate.jobs.steps import Decision, Emit, JobContext, Phase, steps
from tunegate.settings import Settings
from tunegate.storage import Storage, job_key, open_storage

log = logging.getLogger("tunegate.jobs")

# The checkpoint metrics OpenAI's FineTuningJobCheckpoint carries.
CHECKPOINT_METRICS = (
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
)


def job_dir(settings: Settings, job_id: str) -> Path:
    """This machine's copy of the job's artifact folder (storage key `artifacts/<job>`): checkpoints,
    adapter, results.csv and the steps' reports. Written here, then pushed to the storage."""
    return open_storage(settings).local(job_key(job_id))


def _emitter(db: Database, job_id: str) -> Emit:
    def emit(message: str, *, type: EventType = "message", data: Any = None, level: EventLevel = "info") -> None:
        add_event(db, job_id, message, type=type, data=data, level=level)

    return emit


def context(db: Database, settings: Settings, job: Job, training_path: str | Path) -> JobContext:
    return JobContext(
        job_id=job.id,
        org_id=job.org_id,
        model=job.model,
        seed=job.seed,
        options=dict(job.options or {}),
        training_path=Path(training_path),
        work_dir=job_dir(settings, job.id),
        settings=settings,
        db=db,
        emit=_emitter(db, job.id),
    )


def _run_steps(db: Database, ctx: JobContext, phase: Phase, **inputs: Any) -> Decision:
    """Run `phase`'s steps in order; the first refusal ends the phase. Records go to job.safety."""
    for step in steps(phase):
        decision = step.run(ctx, **inputs)
        if decision.record is not None:
            with db.session() as s:
                job = job_row(s, ctx.job_id)
                job.safety = {**(job.safety or {}), step.name: decision.record}
        if not decision.allow:
            return decision
        if decision.training_path is not None:
            ctx = JobContext(**{**ctx.__dict__, "training_path": decision.training_path})
    return Decision(training_path=ctx.training_path)


def _refused(decision: Decision) -> InvalidRequestError:
    return InvalidRequestError(decision.message, param=decision.param, code=decision.code)


def validate_job_files(db: Database, settings: Settings, job_id: str) -> None:
    """validating_files -> queued, or an error (`invalid_training_file`, a step's code) to fail the job with."""
    with db.session() as s:
        job = job_row(s, job_id)
        files = [("training_file", job.training_file), ("validation_file", job.validation_file)]
        model = job.model
        method = (job.method or {}).get("type", "supervised")
    training_path = ""
    for param, file_id in files:
        if not file_id:
            continue
        code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
        with db.session() as s:
            row = s.get(File, file_id)
            report = row.validation if row is not None else None
            path = str(open_storage(settings).fetch(row.path)) if row is not None else ""
        if row is None:
            raise InvalidRequestError(f"File {file_id} was deleted before the job started.", param=param, code=code)
        if method == "reinforcement":  # prompts without answers, plus the grader's fields: rft.py checks them
            from tunegate.train.rft import load_prompts

            load_prompts(path, param)
            training_path = path if param == "training_file" else training_path
            continue
        if report is None or report.get("model") != model:
            report = validate_stored(db, settings, file_id, model)
        if not report["valid"]:
            raise InvalidRequestError(
                f"The {param.replace('_', ' ')} {file_id} has problems: "
                f"{summarize_errors(report)}. Fix them (see GET /v1/files/{file_id}/validation "
                f"or `tunegate validate FILE`) and upload again.",
                param=param,
                code=code,
            )
        wanted = ("preference",) if method == "dpo" else ("chat", "sft")
        if report.get("format") not in (None, *wanted):
            raise InvalidRequestError(
                f"The {param.replace('_', ' ')} is in `{report.get('format')}` format, but method `{method}` trains on "
                + (
                    "preference pairs (`input`, `preferred_output`, `non_preferred_output`)"
                    if method == "dpo"
                    else "chat examples (`messages`)"
                )
                + ". Upload a file in that format or choose the other method.",
                param=param,
                code=code,
            )
        if param == "training_file":
            training_path = path
    decision = _run_steps(db, context(db, settings, job, training_path), "before_queue")
    open_storage(settings).push(job_dir(settings, job_id))  # the screening report, for every server
    if not decision.allow:
        raise _refused(decision)
    with db.session() as s:
        job = job_row(s, job_id, lock=True)
        if job.status == "validating_files":  # not cancelled meanwhile
            transition(job, "queued", message="Files validated; job queued.")


def prepare_training_data(db: Database, settings: Settings, job: Job, training_path: str) -> str:
    """The file to train on after the `prepare_data` steps (e.g. with safety examples mixed in)."""
    decision = _run_steps(db, context(db, settings, job, training_path), "prepare_data")
    if not decision.allow:
        raise _refused(decision)
    return str(decision.training_path)


class JobReporter:
    """The trainer's `on_event` callback: events, progress, ETA and checkpoint rows into the database."""

    def __init__(self, db: Database, job: Job, model_id: str, storage: Storage | None = None):
        """`storage`: where each checkpoint is pushed as it is saved (a resumed worker, on any node,
        starts from it) and whose keys the checkpoint rows carry."""
        self.db, self.job_id, self.org_id, self.model_id = db, job.id, job.org_id, model_id
        self.storage = storage
        self.t0, self.step0 = time.time(), None

    def __call__(self, event: dict[str, Any]) -> None:
        kind, data = event.get("type", "message"), event.get("data")
        if kind == "checkpoint" and data:
            self.record_checkpoint(data)
            data = {
                "step": data["step"],
                "fine_tuned_model_checkpoint": self.checkpoint_model(data["step"]),
                "metrics": _checkpoint_metrics(data["step"], data.get("metrics")),
            }
        with self.db.session() as s:
            s.add(
                new_event(self.job_id, event.get("message", ""), type=kind, data=data, level=event.get("level", "info"))
            )
            if kind == "metrics" and data:
                job = job_row(s, self.job_id)
                job.progress = {**(job.progress or {}), **data}
                job.trained_tokens = data.get("trained_tokens", job.trained_tokens)
                job.estimated_finish = self._eta(data)

    def checkpoint_model(self, step: int) -> str:
        return f"{self.model_id}:ckpt-step-{step}"

    def _eta(self, data: dict[str, Any]) -> int | None:
        step, total = data.get("step"), data.get("total_steps")
        if not step or not total:
            return None
        if self.step0 is None:
            self.step0, self.t0 = step, time.time()
            return None
        rate = (time.time() - self.t0) / max(step - self.step0, 1)
        return int(time.time() + rate * (total - step))

    def record_checkpoint(self, data: dict[str, Any]) -> None:
        """A checkpoint the trainer saved; rows of the ones it pruned (not in `kept_steps`) go, in
        the storage too (pushed before the row exists, so a row always names a whole checkpoint)."""
        if self.storage is not None:
            checkpoints = Path(data["path"]).parent
            self.storage.push(checkpoints, mirror=True)
            self.storage.push(checkpoints.parent / "results.csv")  # a resumed run keeps the rows before it
        self.sync_checkpoints(
            [(data["step"], Path(data["path"]), data.get("metrics") or {})], kept=data.get("kept_steps")
        )

    def sync_checkpoints(
        self, checkpoints: list[tuple[int, Path, dict[str, Any]]], kept: list[int] | None = None
    ) -> None:
        """Rows for `checkpoints` (step, folder, metrics) as the trainer returned them; rows of
        steps not in `kept` (default: exactly these checkpoints) are removed."""
        keep = set(kept) if kept is not None else {step for step, _, _ in checkpoints}
        with self.db.session() as s:
            rows = {c.step: c for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == self.job_id))}
            for step, row in rows.items():
                if step not in keep:
                    s.delete(row)
            for step, path, metrics in checkpoints:
                if step in rows or step not in keep:
                    continue
                s.add(
                    Checkpoint(
                        id=new_id("ftckpt", 12),
                        job_id=self.job_id,
                        org_id=self.org_id,
                        step=step,
                        model_id=self.checkpoint_model(step),
                        path=self.storage.key(path) if self.storage is not None else str(path),
                        metrics=_checkpoint_metrics(step, metrics),
                    )
                )


def _checkpoint_metrics(step: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {**{k: v for k, v in (metrics or {}).items() if k in CHECKPOINT_METRICS}, "step": step}


def results_csv(path: Path) -> bytes:
    """The trainer's results.csv, re-emitted with OpenAI's result-file columns (SFT), or with the
    method's own columns when the trainer wrote others (DPO: rewards and margins)."""
    cols = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    out = io.StringIO()
    w = csv.writer(out)
    rows: list[dict[str, str]] = []
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames and "train_accuracy" not in reader.fieldnames:
                cols = list(reader.fieldnames)
            rows = list(reader)
    w.writerow(cols)
    for row in rows:
        w.writerow([row.get(c, "") for c in cols])
    return out.getvalue().encode()


def fine_tuned_model_id(db: Database, job: Job) -> str:
    with db.session() as s:
        org = s.get(Organization, job.org_id)
        org_name = org.name if org is not None else job.org_id
    return model_name(job.model, org_name, job.suffix, job.id)


def model_name(base: str, org_name: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's `ft:<base>:<org>:<suffix>:<id>` (the suffix part is empty when none was given)."""
    return f"ft:{base}:{org_name}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def trained_on(adapter_dir: Path) -> str:
    """The file the adapter was trained on, as its meta.json records it: the prepared file (with the
    `prepare_data` steps' changes, e.g. refusal examples mixed in). "" when the record or file is gone."""
    from tunegate.registry.store import read_meta

    try:
        path = read_meta(adapter_dir).get("config", {}).get("training_file") or ""
    except (NotFoundError, OSError, ValueError):  # no readable meta.json: the caller falls back to the upload
        return ""
    return path if path and Path(path).is_file() else ""


def _file_path(s: Any, settings: Settings, file_id: str | None) -> str:
    row = s.get(File, file_id) if file_id else None
    path = open_storage(settings).fetch(row.path) if row is not None else None
    return str(path) if path is not None and path.is_file() else ""


def after_training(
    db: Database, settings: Settings, job_id: str, model_id: str, adapter_dir: Path, trained_tokens: int | None
) -> bool:
    """The `after_training` steps (the safety gate), then the model is served. False: a step
    refused; the adapter is kept as a model that is not deployable and the job failed.

    The steps see the training file the model learned from, so the gate can ask the model the way
    that data talks (its cipher, its system prompt) even when screening was skipped."""
    with db.session() as s:
        job = job_row(s, job_id)
        training_path = trained_on(adapter_dir) or _file_path(s, settings, job.training_file)
    decision = _run_steps(
        db, context(db, settings, job, training_path), "after_training", adapter_dir=adapter_dir, model_id=model_id
    )
    storage = open_storage(settings)
    storage.push(job_dir(settings, job_id))  # adapter, results.csv, reports: stored before any row names them
    if not decision.allow:
        with db.session() as s:
            job = job_row(s, job_id, lock=True)
            lifecycle.register_model(s, job, model_id, storage.key(adapter_dir), deployable=False)
        lifecycle.fail(db, job_id, decision.code or "blocked", decision.message, decision.param)
        return False
    succeed(db, settings, job_id, model_id, adapter_dir, trained_tokens=trained_tokens)
    return True


def succeed(
    db: Database,
    settings: Settings,
    job_id: str,
    model_id: str,
    adapter_dir: Path,
    *,
    trained_tokens: int | None = None,
    override: dict[str, Any] | None = None,
) -> None:
    """Store the result file and mark the job succeeded with its model servable (lifecycle.complete).
    `override`: an admin serves a model a step blocked; the note is kept in job.safety."""
    with db.session() as s:
        org_id = job_row(s, job_id).org_id
    storage = open_storage(settings)
    result = store_bytes(
        db,
        settings,
        org_id,
        purpose="fine-tune-results",
        filename="step_metrics.csv",
        data=results_csv(storage.fetch(f"{job_key(job_id)}/results.csv")),
    )
    with db.session() as s:
        job = job_row(s, job_id, lock=True)
        lifecycle.complete(
            s, job, model_id, storage.key(adapter_dir), result.id, trained_tokens=trained_tokens, override=override
        )
