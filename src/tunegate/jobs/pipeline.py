"""What happens to one job around training: checking its files before it is queued, and, inside
the worker, turning the job row into a frozen training config and the trainer's events into job
events, checkpoints, a result file and finally a fine-tuned model.

Owns the glue between the job store and the trainer. The trainer's own logic is in train/.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunegate.db import Checkpoint, Database, File, FineTunedModel, Job, JobEvent, Organization
from tunegate.errors import InvalidRequestError
from tunegate.ids import new_id, now
from tunegate.jobs import service
from tunegate.settings import Settings

log = logging.getLogger("tunegate.jobs")


def validate_job_files(db: Database, settings: Settings, job_id: str) -> None:
    """validating_files -> queued, or failed with `invalid_training_file` naming the first problems."""
    from tunegate.files.service import summarize_errors, validate_stored

    with db.session() as s:
        job = s.get(Job, job_id)
        files = [("training_file", job.training_file), ("validation_file", job.validation_file)]
        model = job.model
    for param, file_id in files:
        if not file_id:
            continue
        with db.session() as s:
            row = s.get(File, file_id)
            report = row.validation if row is not None else None
        if row is None:
            raise InvalidRequestError(f"File {file_id} was deleted before the job started.", param=param,
                                      code="invalid_training_file" if param == "training_file" else "invalid_validation_file")
        if report is None or report.get("model") != model:
            report = validate_stored(db, settings, file_id, model)
        if not report["valid"]:
            code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
            raise InvalidRequestError(f"The {param.replace('_', ' ')} {file_id} has problems: "
                                      f"{summarize_errors(report)}. Fix them (see GET /v1/files/{file_id}/validation "
                                      f"or `tunegate validate FILE`) and upload again.", param=param, code=code)
        if param == "training_file" and report.get("format") not in (None, "chat", "sft"):
            raise InvalidRequestError(f"The training file is in `{report.get('format')}` format; only supervised "
                                      "chat data can be trained until DPO is implemented.", param=param,
                                      code="invalid_training_file")
    from tunegate.safety.jobs import screen_job  # raises `unsafe_training_file` when blocked

    screen_job(db, settings, job_id)
    with db.session() as s:
        job = s.get(Job, job_id)
        if job.status == "validating_files":
            job.status = "queued"
            s.add(JobEvent(id=new_id("ftevent", 12), job_id=job_id, message="Files validated; job queued."))


class JobReporter:
    """The trainer's `on_event` callback: events, progress, ETA and checkpoints into the database."""

    def __init__(self, db: Database, settings: Settings, job: Job, model_id: str, out_dir: Path):
        self.db, self.settings, self.job_id, self.org_id = db, settings, job.id, job.org_id
        self.model_id, self.out_dir = model_id, out_dir
        self.t0, self.step0 = time.time(), None

    def __call__(self, event: dict[str, Any]) -> None:
        data = event.get("data")
        with self.db.session() as s:
            s.add(JobEvent(id=new_id("ftevent", 12), job_id=self.job_id, message=event.get("message", ""),
                           level=event.get("level", "info"), type=event.get("type", "message"), data=data))
            if event.get("type") == "metrics" and data:
                job = s.get(Job, self.job_id)
                job.progress = {**(job.progress or {}), **data}
                job.trained_tokens = data.get("trained_tokens", job.trained_tokens)
                job.estimated_finish = self._eta(data)
        if event.get("type") == "metrics" and data and data.get("full_valid_loss", None) is not None or \
                "checkpoint" in (event.get("message") or "").lower():
            self.sync_checkpoints()

    def _eta(self, data: dict) -> int | None:
        step, total = data.get("step"), data.get("total_steps")
        if not step or not total:
            return None
        if self.step0 is None:
            self.step0, self.t0 = step, time.time()
            return None
        rate = (time.time() - self.t0) / max(step - self.step0, 1)
        return int(time.time() + rate * (total - step))

    def sync_checkpoints(self) -> None:
        """Mirror out_dir/checkpoints/step-N folders (the trainer keeps the last few) as checkpoint rows."""
        import json

        ck_dir = self.out_dir / "checkpoints"
        on_disk = {}
        for d in ck_dir.glob("step-*"):
            meta = d / "meta.json"
            if meta.exists() and d.name.removeprefix("step-").isdigit():
                on_disk[int(d.name.removeprefix("step-"))] = d
        with self.db.session() as s:
            rows = {c.step: c for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == self.job_id))}
            for step, row in rows.items():
                if step not in on_disk:
                    s.delete(row)
            for step, d in on_disk.items():
                if step in rows:
                    continue
                meta = json.loads((d / "meta.json").read_text())
                metrics = {k: v for k, v in (meta.get("metrics") or {}).items() if k in (
                    "full_valid_loss", "full_valid_mean_token_accuracy", "train_loss", "train_mean_token_accuracy",
                    "valid_loss", "valid_mean_token_accuracy")}
                metrics["step"] = step
                s.add(Checkpoint(id=new_id("ftckpt", 12), job_id=self.job_id, org_id=self.org_id, step=step,
                                 model_id=f"{self.model_id}:ckpt-step-{step}", path=str(d), metrics=metrics))


def results_csv(path: Path) -> bytes:
    """The trainer's results.csv, re-emitted with OpenAI's result-file columns."""
    cols = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(cols)
    if path.exists():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                w.writerow([row.get(c, "") for c in cols])
    return out.getvalue().encode()


def fine_tuned_model_id(db: Database, job: Job) -> str:
    with db.session() as s:
        org_name = s.get(Organization, job.org_id).name
    return service.model_name(job.model, org_name, job.suffix, job.id)


def finish_succeeded(db: Database, settings: Settings, job_id: str, model_id: str, adapter_dir: Path,
                     results_path: Path, trained_tokens: int | None) -> None:
    from tunegate.files.service import store_bytes

    with db.session() as s:
        job = s.get(Job, job_id)
        org_id, base = job.org_id, job.model
    result = store_bytes(db, settings, org_id, purpose="fine-tune-results", filename="step_metrics.csv",
                         data=results_csv(results_path))
    with db.session() as s:
        job = s.get(Job, job_id)
        if s.get(FineTunedModel, model_id) is None:
            s.add(FineTunedModel(id=model_id, org_id=org_id, job_id=job_id, base_model=base,
                                 adapter_path=str(adapter_dir), deployable=True))
        job.status, job.finished_at, job.control, job.worker_pid = "succeeded", now(), None, None
        job.fine_tuned_model, job.result_files = model_id, [result.id]
        job.trained_tokens = trained_tokens if trained_tokens is not None else job.trained_tokens
        job.estimated_finish = None
        s.add(JobEvent(id=new_id("ftevent", 12), job_id=job_id,
                       message=f"The job has successfully completed. New model: {model_id}"))
