"""The Ray executor (`TUNEGATE_EXECUTOR=ray`, `TUNEGATE_RAY_ADDRESS=host:port`): each training job
runs as one Ray task on a Ray cluster, with the resources it declares.

Owns starting, watching and stopping that task. The task runs the same worker code as the local
executor (`tunegate.jobs.worker.run`) with the server's settings, so events, heartbeats, cancel and
pause go through the shared database, and checkpoints through the shared data directory, exactly as
for a local worker: nothing here assumes the task runs on the server's machine, only that every
node reaches the database and mounts the data directory at the same path. The server hands the
task absolute storage paths and the storage's identity (storage/), which the task checks before it
touches a file: a node without the shared mount fails the job with `storage_not_shared`.

A job that asks for N data-parallel ranks (`tunegate.n_workers`) is trained by Ray Train's
`TorchTrainer` (train/distributed.py `run_ray_train`): N Ray Train workers, each declaring the
resources above (so ranks spread over nodes as resources allow), while the job's own task only
waits and keeps the heartbeat (it declares no CPU). Rank 0 writes the job's events and polls
cancel/pause from its own node. A lost rank or node ends the task as a crash, so the job is
re-queued and resumes from its last checkpoint, at any world size.

Each task gets its own Ray worker process (`max_calls=1`: torch state and memory are not reused
between jobs) and writes its output to the job's `worker.log` in the data directory; the job's
events name the node and that log. If the Ray worker process or its node dies, the task fails
(Ray does not retry it: `max_retries=0`), `poll` reports a crash and the supervisor re-queues the
job, which resumes from its last checkpoint like any crashed worker. `ray` is an optional extra
(`pip install 'tunegate[ray]'`); the local executor stays the default.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
import threading

from tunegate.errors import InvalidRequestError
from tunegate.settings import Settings

log = logging.getLogger("tunegate.jobs.ray")


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise InvalidRequestError(
            "TUNEGATE_EXECUTOR=ray needs Ray: pip install 'tunegate[ray]' (or pip install ray) "
            "on the server and every node.",
            param="executor",
            code="ray_not_installed",
        ) from exc
    return ray


def _run_job(job_id: str, settings_json: str, storage_id: str) -> int:
    """Inside the Ray worker process: the ordinary training worker, its output in the job's log."""
    import ray

    from tunegate.jobs import worker
    from tunegate.jobs.lifecycle import add_event, fail
    from tunegate.settings import Settings
    from tunegate.storage import StorageNotShared, open_storage

    settings = Settings.model_validate_json(settings_json)
    try:  # before anything is read or written there: a node without the shared storage fails the job
        open_storage(settings).verify(storage_id, f"Ray node {ray.util.get_node_ip_address()}")
    except StorageNotShared as exc:
        from tunegate.db import Database

        fail(Database(settings.db_url), job_id, exc.code or "storage_not_shared", exc.message, exc.param)
        return 0
    log_path = settings.artifacts_dir / job_id / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab", buffering=0)
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    from tunegate.db import Database, Job

    db = Database(settings.db_url)
    with db.session() as s:  # the pid on its node: what a test (or an operator) kills to simulate a crash
        job = s.get(Job, job_id)
        if job is not None:
            job.worker_pid = os.getpid()
    node = ray.get_runtime_context().get_node_id()
    add_event(
        db,
        job_id,
        f"Training worker started on Ray node {node[:12]} ({ray.util.get_node_ip_address()}, "
        f"pid {os.getpid()}); its log: {log_path}",
        data={"ray_node_id": node, "worker_log": str(log_path)},
    )
    db.engine.dispose()
    return worker.run(job_id, settings, launch=functools.partial(_launch_ray_train, job_id, settings_json))


def _job_callbacks(job_id: str, settings_json: str, model_id: str):
    """Rank 0's event callback and stop poll, built inside its Ray Train worker (they hold a
    database connection, which does not travel between processes)."""
    from tunegate.db import Database, Job
    from tunegate.jobs.lifecycle import job_row
    from tunegate.jobs.pipeline import JobReporter
    from tunegate.settings import Settings

    db = Database(Settings.model_validate_json(settings_json).db_url)
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise RuntimeError(f"job {job_id} is gone")
        s.expunge(job)

    def should_stop() -> str | None:
        with db.session() as s:
            return job_row(s, job_id).control

    from tunegate.storage import open_storage

    return JobReporter(db, job, model_id, open_storage(Settings.model_validate_json(settings_json))), should_stop


def _launch_ray_train(job_id: str, settings_json: str, config, out_dir, reporter, should_stop, world_size, threads):
    """worker.run's data-parallel launcher inside a Ray task: TorchTrainer instead of local ranks."""
    from tunegate.settings import Settings
    from tunegate.train.distributed import RanksLost, run_data_parallel, run_ray_train

    if world_size <= 1:
        return run_data_parallel(config, out_dir, reporter, should_stop, world_size=1, threads=threads)
    s = Settings.model_validate_json(settings_json)
    resources: dict[str, float] = {"CPU": s.ray_num_cpus}
    if s.ray_num_gpus:
        resources["GPU"] = s.ray_num_gpus
    if s.ray_memory_gb:
        resources["memory"] = int(s.ray_memory_gb * 2**30)
    rank_threads = s.torch_threads or max(1, int(s.ray_num_cpus))
    reporter(
        {
            "level": "info",
            "type": "message",
            "data": {"world_size": world_size, "launcher": "ray_train"},
            "message": f"Training data-parallel on {world_size} ranks with Ray Train's TorchTrainer "
            f"({'nccl' if config.device == 'cuda' else 'gloo'}), {resources} and {rank_threads} threads per rank.",
        }
    )
    try:
        return run_ray_train(
            config,
            out_dir,
            functools.partial(_job_callbacks, job_id, settings_json, reporter.model_id),
            world_size,
            threads=rank_threads,
            resources_per_worker=resources,
            env={"TUNEGATE_TORCH_THREADS": str(rank_threads), "OMP_NUM_THREADS": str(rank_threads)},
        )
    except RanksLost as exc:  # end the task as a crash: the supervisor re-queues the job to resume
        log.warning("job %s: %s", job_id, exc)
        print(f"Ray Train lost a rank: {exc}", file=sys.stderr, flush=True)
        os._exit(3)


class RayExecutor:
    """Jobs as Ray tasks. Handles are small integers local to this server process."""

    name = "ray"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ray = _import_ray()
        self._refs: dict[int, object] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        if not self.ray.is_initialized():
            self.ray.init(
                address=settings.ray_address or "auto",
                namespace="tunegate",
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        self._task = self.ray.remote(max_calls=1, max_retries=0)(_run_job)
        from tunegate.storage import open_storage

        self.storage = open_storage(settings)
        self.storage_id = self.storage.identity()
        from tunegate.db import Database

        self._db = Database(settings.db_url)

    def _options(self) -> tuple[dict, str]:
        s = self.settings
        opts: dict = {"num_cpus": s.ray_num_cpus, "num_gpus": s.ray_num_gpus}
        if s.ray_memory_gb:
            opts["memory"] = int(s.ray_memory_gb * 2**30)
        threads = s.torch_threads or max(1, int(s.ray_num_cpus))
        worker_settings = self.storage.worker_settings(s.model_copy(update={"torch_threads": threads}))
        from tunegate.train.allocator import worker_env

        env = worker_env(threads, allocator=s.worker_allocator == "jemalloc")
        env = {k: v for k, v in env.items() if k != "LD_PRELOAD"}  # the Ray worker process is already running
        opts["runtime_env"] = {"env_vars": env}
        return opts, worker_settings.model_dump_json()

    def launch(self, job_id: str) -> int:
        options, settings_json = self._options()
        if self._world_size(job_id) > 1:  # the ranks declare the resources; this task only waits
            options = {**options, "num_cpus": 0, "num_gpus": 0}
            options.pop("memory", None)
        ref = self._task.options(**options).remote(job_id, settings_json, self.storage_id)
        with self._lock:
            handle = next(self._ids)
            self._refs[handle] = ref
        return handle

    def _world_size(self, job_id: str) -> int:
        from tunegate.db import Job

        with self._db.session() as s:
            job = s.get(Job, job_id)
            return int(((job.options or {}) if job is not None else {}).get("n_workers") or 1)

    def poll(self, handle: int) -> int | None:
        ref = self._refs.get(handle)
        if ref is None:
            return -1
        done, _ = self.ray.wait([ref], timeout=0)
        if not done:
            return None
        self._refs.pop(handle, None)
        try:
            return int(self.ray.get(ref))
        except Exception as exc:  # the worker process or its node died, or the task was cancelled
            log.warning("Ray task %s ended without a result: %s", handle, exc)
            return -1

    def kill(self, handle: int) -> None:
        ref = self._refs.pop(handle, None)
        if ref is not None:
            self.ray.cancel(ref, force=True)
