"""The training worker process: `python -m tunegate.jobs.worker JOB_ID`.

Started by the local executor (or inside a Ray task). Builds the frozen training config from the
job row, fetches its inputs from the storage (storage/: with an object store, into this worker's
scratch folder), runs the trainer with callbacks that write events, push each checkpoint to the
storage and read cancel/pause requests, keeps a heartbeat, and records the outcome. If it is
killed, nothing is recorded and the supervisor re-queues the job; the next worker, on any node,
resumes from the last checkpoint in the storage.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from typing import Any

from tunegate.db import Database, File, Job
from tunegate.errors import InvalidRequestError, TunegateError
from tunegate.jobs import pipeline
from tunegate.jobs.lifecycle import add_event, fail, job_row, transition
from tunegate.settings import Settings

log = logging.getLogger("tunegate.worker")


def _heartbeat(db: Database, job_id: str, every: float, stop: threading.Event, parent: int) -> None:
    while not stop.wait(every):
        if os.getppid() != parent:  # the server died: stop; the next server resumes the job
            os._exit(3)
        try:
            with db.session() as s:
                job_row(s, job_id).heartbeat_at = time.time()
        except Exception:  # a busy database must not kill training; the next beat retries
            log.warning("heartbeat failed", exc_info=True)


def build_config(db: Database, settings: Settings, job: Job):
    from tunegate.catalog import get_base_model
    from tunegate.storage import open_storage
    from tunegate.train.config import (
        TrainConfig,
        base_learning_rate,
        resolve_beta,
        resolve_hyperparameters,
        resolve_reinforcement,
    )

    storage = open_storage(settings)
    base = get_base_model(job.model, settings)
    with db.session() as s:
        train_file = s.get(File, job.training_file)
        if train_file is None:
            raise InvalidRequestError(
                f"The training file {job.training_file} was deleted before training started.",
                param="training_file",
                code="invalid_training_file",
            )
        valid_file = s.get(File, job.validation_file) if job.validation_file else None
    report = train_file.validation or {}
    method = (job.method or {}).get("type", "supervised")
    hp = (job.method or {}).get(method, {}).get("hyperparameters", {})
    n_epochs, batch_size, lr = resolve_hyperparameters(
        hp.get("n_epochs", "auto"),
        hp.get("batch_size", "auto"),
        hp.get("learning_rate_multiplier", "auto"),
        n_examples=int(report.get("n_examples") or 0),
        method=method,
    )
    method_fields: dict = {"method": method}
    if method == "dpo":
        method_fields["beta"] = resolve_beta(hp.get("beta", "auto"))
    if method == "reinforcement":
        method_fields |= resolve_reinforcement(hp)
    opts = job.options or {}
    if isinstance(opts.get("init_adapter"), str):  # continued training: the parent adapter, by key
        opts = {**opts, "init_adapter": str(storage.fetch(opts["init_adapter"]))}
    training_path = pipeline.prepare_training_data(db, settings, job, str(storage.fetch(train_file.path)))
    config = TrainConfig(
        base_model=base.name,
        base_model_path=str(base.path),
        template_sha256=base.template_sha256,
        training_file=training_path,
        validation_file=str(storage.fetch(valid_file.path)) if valid_file else None,
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=job.seed,
        keep_checkpoints=settings.keep_checkpoints,
        **method_fields,
        **{k: v for k, v in opts.items() if k in TrainConfig.__dataclass_fields__},
    )
    resolved: dict[str, Any] = {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": round(lr / base_learning_rate(method), 6),
    }
    if method == "dpo":
        resolved["beta"] = config.beta
    if method == "reinforcement":
        resolved |= {
            "compute_multiplier": config.rft_group_size / 4,
            "eval_interval": config.rft_eval_interval or "epoch",
            "eval_samples": config.rft_eval_samples,
            "reasoning_effort": "default",
        }
    return config, resolved


def run(job_id: str, settings: Settings | None = None, launch=None) -> int:
    """`launch`: how data-parallel ranks start (default: `run_data_parallel`, on this machine; the
    Ray executor passes one that uses Ray Train). Same arguments, returns rank 0's TrainResult."""
    from tunegate.storage import job_key, open_storage
    from tunegate.train.distributed import run_data_parallel

    settings = settings or Settings.from_worker_env()
    db = Database(settings.db_url)
    with db.session() as s:
        job = s.get(Job, job_id)
    if job is None or job.status != "running":
        return 0
    stop = threading.Event()
    threading.Thread(
        target=_heartbeat, args=(db, job_id, settings.heartbeat_seconds, stop, os.getppid()), daemon=True
    ).start()
    storage = open_storage(settings)
    out_dir = pipeline.job_dir(settings, job_id)
    model_id = pipeline.fine_tuned_model_id(db, job)
    try:
        # Resume from what the storage holds, not from what an earlier attempt left on this node.
        for name in ("checkpoints", "results.csv"):
            storage.evict(f"{job_key(job_id)}/{name}")
            storage.fetch(f"{job_key(job_id)}/{name}")
        config, resolved = build_config(db, settings, job)
        with db.session() as s:
            row = job_row(s, job_id)
            row.hyperparameters = resolved
        resuming = (out_dir / "checkpoints").exists() and any((out_dir / "checkpoints").iterdir())
        if resuming:
            add_event(db, job_id, "Resuming training from the last checkpoint.")
        reporter = pipeline.JobReporter(db, job, model_id, storage)

        def should_stop() -> str | None:
            with db.session() as s:
                return job_row(s, job_id).control

        n_workers = int((job.options or {}).get("n_workers") or 1)
        threads = max(1, (settings.torch_threads or os.cpu_count() or 1) // n_workers)  # the worker's cores, shared
        if config.method == "reinforcement":  # one process: the grader's reward function lives here
            from tunegate.jobs.steps import reward_graders
            from tunegate.train.rft import run_rft

            grader = (job.method or {})["reinforcement"]["grader"]
            reward_fn = reward_graders().reward_fn(grader, settings=settings)
            result = run_rft(config, out_dir, reporter, should_stop, reward_fn)
        else:
            result = (launch or run_data_parallel)(
                config, out_dir, reporter, should_stop, world_size=n_workers, threads=threads
            )
        reporter.sync_checkpoints(result.checkpoints)
        if result.status in ("cancelled", "paused"):
            with db.session() as s:
                row = job_row(s, job_id, lock=True)
                if result.status == "cancelled":
                    transition(row, "cancelled", message="Training stopped: the job was cancelled.")
                else:
                    transition(
                        row,
                        "paused",
                        message="Training paused; a checkpoint was saved. Resume to continue.",
                        control=None,
                        worker_pid=None,
                    )
        else:
            assert result.adapter_dir is not None  # a finished run always saves its adapter
            pipeline.after_training(db, settings, job_id, model_id, result.adapter_dir, result.trained_tokens)
        return 0
    except TunegateError as exc:
        fail(db, job_id, exc.code or "training_error", exc.message, exc.param)
        return 0
    except Exception as exc:  # recorded as a clean failure; the traceback goes to the worker log only
        traceback.print_exc()
        fail(db, job_id, "training_error", f"Training failed: {type(exc).__name__}: {exc}")
        return 0
    finally:
        stop.set()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        print("usage: python -m tunegate.jobs.worker JOB_ID", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1]))


if __name__ == "__main__":
    main()
