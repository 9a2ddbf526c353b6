"""Runs queued jobs: the supervisor loop and the executor interface with its local implementation.

The supervisor (one per server) moves jobs along: it validates (and screens) the files of new jobs,
launches queued jobs on an executor up to the concurrency setting, and notices workers that died
(SIGKILL, out of memory, a server restart) and re-queues their jobs, which then resume from their
last checkpoint, up to `max_job_retries` times before failing cleanly.

The executor is a small interface so a Ray executor can be registered beside the local one; the
training code itself (train/) knows nothing of this module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from sqlalchemy import or_, select, update

from tunegate.db import Database, Job
from tunegate.errors import TunegateError
from tunegate.ids import new_id, now
from tunegate.jobs.lifecycle import IN_FLIGHT, IllegalTransition, fail, job_row, transition
from tunegate.jobs.pipeline import validate_job_files
from tunegate.plugins import EXECUTORS
from tunegate.settings import Settings
from tunegate.train.allocator import worker_env

log = logging.getLogger("tunegate.jobs")


class Executor(Protocol):
    """Where training workers run. `launch` must return at once; the worker reports via the database."""

    name: str

    def launch(self, job_id: str) -> int: ...  # returns a handle (a pid for the local executor)

    def poll(self, handle: int) -> int | None: ...  # exit code, or None while running

    def kill(self, handle: int) -> None: ...


class LocalExecutor:
    """Worker subprocesses on this machine, started with the allocator settings the trainer asks for."""

    name = "local"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.procs: dict[int, subprocess.Popen] = {}

    def worker_environment(self) -> dict[str, str]:
        env = worker_env(self.settings.torch_threads, allocator=self.settings.worker_allocator == "jemalloc")
        # The worker gets this server's settings, with the thread count worker_env chose for it.
        threads = int(env["TUNEGATE_TORCH_THREADS"])
        from tunegate.storage import open_storage

        # With an object store the worker works in its own scratch folder, as it would on another node.
        worker = open_storage(self.settings).worker_settings(
            self.settings.model_copy(update={"torch_threads": threads})
        )
        return {**env, **worker.worker_env()}

    def launch(self, job_id: str) -> int:
        env = self.worker_environment()
        log_path = self.settings.artifacts_dir / job_id / "worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunegate.jobs.worker", job_id],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[proc.pid] = proc
        return proc.pid

    def poll(self, handle: int) -> int | None:
        proc = self.procs.get(handle)
        if proc is None:
            return None if _pid_alive(handle) else -1
        code = proc.poll()
        if code is not None:
            self.procs.pop(handle, None)
        return code

    def kill(self, handle: int) -> None:
        proc = self.procs.get(handle)
        if proc is not None:
            proc.kill()
            proc.wait()


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # A worker that exited after its server died is a zombie until someone reaps it (inside a
    # container PID 1 often never does); kill(0) still succeeds on it, so read its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class JobSupervisor:
    """Background service of the API server (started in the app's lifespan)."""

    is_worker = True

    def __init__(self, settings: Settings, db: Database, executor: Executor | None = None, interval: float = 0.5):
        self.settings, self.db, self.interval = settings, db, interval
        self.executor = executor or EXECUTORS.get(settings.executor)(settings)
        self.handles: dict[str, int] = {}  # job id -> handle, for workers this process launched
        # Several servers may share one database: each holds leases on the jobs it supervises.
        self.server_id = new_id("server", 8)
        self.lease_seconds = settings.heartbeat_timeout_seconds
        self._validating: set[str] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="validate")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-supervisor", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread:
            await asyncio.to_thread(self._thread.join, 10)
        # Workers keep their checkpoints; on the next start their jobs are resumed.
        for handle in list(self.handles.values()):
            self.executor.kill(handle)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self.db.session() as s:  # another server (or the next start) takes them over at once
            s.execute(update(Job).where(Job.lease_owner == self.server_id).values(lease_expires=0.0))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must survive a bad job; the error is logged with its job
                log.exception("job supervisor tick failed")
            self._stop.wait(self.interval)

    def tick(self) -> None:
        with self.db.session() as s:  # renew this server's leases first: they must never lapse while it lives
            s.execute(
                update(Job)
                .where(Job.lease_owner == self.server_id, Job.status.in_(IN_FLIGHT))
                .values(lease_expires=time.time() + self.lease_seconds)
            )
        with self.db.session() as s:
            jobs = list(s.scalars(select(Job).where(Job.status.in_(IN_FLIGHT)).order_by(Job.created_ns)))
        running = 0
        for job in jobs:
            if job.status == "validating_files" and job.id not in self._validating and self._take_lease(job):
                self._validating.add(job.id)
                self._pool.submit(self._validate, job.id)
            elif job.status == "running":
                running += self._check_running(job)
        for job in jobs:
            if job.status == "queued" and running < self.settings.worker_concurrency:
                self._launch(job.id)
                running += 1

    def _check_running(self, job: Job) -> int:
        handle = self.handles.get(job.id)
        if handle is not None:
            code = self.executor.poll(handle)
            if code is None:
                return 1
            self.handles.pop(job.id, None)
            with self.db.session() as s:
                status = job_row(s, job.id).status
            if status == "running":  # the worker ended without recording an outcome: it crashed
                self._crashed(job.id, f"the training worker exited with code {code}")
            return 0
        # A running job this supervisor did not start: another live server's (leave it), or one whose
        # server died or restarted (take it over once its lease has expired).
        if not self._take_lease(job):
            return 0
        stale = (job.heartbeat_at or 0) < time.time() - self.settings.heartbeat_timeout_seconds
        if _pid_alive(job.worker_pid) and not stale:
            return 1
        self._crashed(job.id, "the training worker stopped (server restart or crash)")
        return 0

    def _take_lease(self, job: Job) -> bool:
        """Compare-and-set on the job row: take its lease when it is free, expired or already ours.
        Of several servers trying at once exactly one row update succeeds (the database's row lock)."""
        t = time.time()
        with self.db.session() as s:
            taken = s.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.status == job.status,
                    or_(Job.lease_owner.is_(None), Job.lease_owner == self.server_id, Job.lease_expires < t),
                )
                .values(lease_owner=self.server_id, lease_expires=t + self.lease_seconds)
            )
            return taken.rowcount == 1  # type: ignore[attr-defined]  # a CursorResult for UPDATE

    def _crashed(self, job_id: str, why: str) -> None:
        with self.db.session() as s:
            job = job_row(s, job_id, lock=True)
            if job.status != "running":  # it ended (or was cancelled) while we looked
                return
            job.attempts += 1
            attempts = job.attempts
            if attempts <= self.settings.max_job_retries:
                transition(
                    job,
                    "queued",
                    level="warn",
                    data={"retry": attempts},
                    worker_pid=None,
                    message=f"Training was interrupted ({why}); resuming from the last checkpoint "
                    f"(retry {attempts} of {self.settings.max_job_retries}).",
                )
                return
        fail(
            self.db,
            job_id,
            "worker_crashed",
            f"Training stopped {attempts} times ({why}); giving up after "
            f"{self.settings.max_job_retries} retries. Checkpoints so far are kept.",
        )

    def _launch(self, job_id: str) -> None:
        with self.db.session() as s:
            job = job_row(s, job_id, lock=True)
            if job.status != "queued":
                return
            transition(
                job,
                "running",
                message="Fine-tuning job started.",
                started_at=job.started_at or now(),
                heartbeat_at=time.time(),
                lease_owner=self.server_id,
                lease_expires=time.time() + self.lease_seconds,
            )
        try:
            handle = self.executor.launch(job_id)
        except Exception as exc:
            log.exception("could not launch job %s", job_id)
            fail(self.db, job_id, "executor_error", f"Could not start a training worker: {exc}")
            return
        self.handles[job_id] = handle
        with self.db.session() as s:
            job_row(s, job_id).worker_pid = handle

    def _validate(self, job_id: str) -> None:
        try:
            validate_job_files(self.db, self.settings, job_id)
        except IllegalTransition:
            log.info("job %s changed while its files were checked; left as it is", job_id)
        except TunegateError as exc:
            fail(self.db, job_id, exc.code or "invalid_training_file", exc.message, exc.param)
        except Exception as exc:
            if self._stop.is_set():  # the server is going down: the job stays `validating_files` for the next start
                log.warning("validation of job %s interrupted by shutdown; it runs again on the next start", job_id)
                return
            log.exception("validation of job %s failed", job_id)
            fail(self.db, job_id, "validation_error", f"Validating the files failed unexpectedly: {exc}")
        finally:
            self._validating.discard(job_id)
