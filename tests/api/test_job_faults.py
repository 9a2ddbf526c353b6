"""Durability of the job queue: a worker killed with SIGKILL resumes from its checkpoint, cancel
stops a running job, and a server restart loses no queued or running job (tiny model, real workers).
The restart test runs on SQLite and on PostgreSQL (the `db_backend` fixture); the worker-level ones,
which do not depend on the store, on SQLite only (CI time)."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import tiny_server_env
from tests.server import RunningServer


def _data(n: int) -> bytes:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Tell me about item {i}."},
                    {"role": "assistant", "content": f"Item {i} is a fine item, number {i}."},
                ]
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def _server(tmp_path, tiny_model_path, db_backend, **env) -> RunningServer:
    return RunningServer(
        tmp_path / "data",
        tiny_server_env(
            tiny_model_path,
            TUNEGATE_HEARTBEAT_SECONDS="0.5",
            TUNEGATE_HEARTBEAT_TIMEOUT_SECONDS="5",
            TUNEGATE_TORCH_THREADS="1",
            **db_backend(),
            **env,
        ),
    )


def _client(srv):
    """A key of an organisation whose policy skips the post-training gate: these tests are about the
    queue and the workers; the gate is tested in test_safety_api.py."""
    admin = srv.create_key("faults", admin=True)
    r = httpx.post(
        srv.base_url + "/admin/policy", json={"gate": {"enabled": False}}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 200, r.text
    return srv.client(srv.create_key("faults"))


def _wait(fn, timeout=600, every=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _job_row(srv, job_id):
    url = srv.env.get("TUNEGATE_DATABASE_URL") or f"sqlite:///{srv.data_dir / 'tunegate.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return tuple(
                con.execute(text("select status, worker_pid, attempts from jobs where id = :id"), {"id": job_id}).one()
            )
    finally:
        engine.dispose()


def _create(client, n_examples=40, epochs=3, batch=1):
    f = client.files.create(file=("t.jsonl", io.BytesIO(_data(n_examples))), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model="tiny",
        training_file=f.id,
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": batch}}},
    )


def _statuses(client, job_id):
    """The job's status changes, oldest first, from its typed `status` events."""
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))  # every page, newest first
    return [(e.data["previous"], e.data["status"]) for e in reversed(events) if e.type == "status"]


SQLITE_ONLY = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_sigkill_worker_resumes_from_checkpoint(tmp_path, tiny_model_path, db_backend):
    with _server(tmp_path, tiny_model_path, db_backend) as srv:
        client = _client(srv)
        job = _create(client)
        # Wait until the first epoch's checkpoint exists and training is past it, then kill the worker.
        _wait(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data)
        status, pid, _ = _job_row(srv, job.id)
        assert status == "running" and pid
        os.kill(pid, signal.SIGKILL)
        done = _wait(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j)
        assert done.status == "succeeded", done.error
        # running -> queued (the crash, retry 1) -> running again, resumed from the checkpoint.
        assert _statuses(client, job.id) == [
            (None, "validating_files"),
            ("validating_files", "queued"),
            ("queued", "running"),
            ("running", "queued"),
            ("queued", "running"),
            ("running", "succeeded"),
        ]
        checkpoints = [
            e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "checkpoint"
        ]
        assert checkpoints and len(checkpoints) == len(set(checkpoints))  # none saved twice: training resumed
        assert _job_row(srv, job.id)[2] == 1  # one retry used
        metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
        # 40 examples + the mixed-in refusal examples, x 3 epochs, batch 1: the whole job was trained.
        assert max(m["step"] for m in metrics) == metrics[0]["total_steps"] >= 120


@SQLITE_ONLY
def test_cancel_running_job(tmp_path, tiny_model_path, db_backend):
    with _server(tmp_path, tiny_model_path, db_backend) as srv:
        client = _client(srv)
        job = _create(client, n_examples=200, epochs=5)
        _wait(lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id).data))
        client.fine_tuning.jobs.cancel(job.id)
        done = _wait(
            lambda: (
                (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("cancelled", "succeeded", "failed") and j
            ),
            timeout=120,
        )
        assert done.status == "cancelled" and done.fine_tuned_model is None
        assert _statuses(client, job.id)[-1] == ("running", "cancelled")
        assert _job_row(srv, job.id)[1] is None  # no worker left recorded


def test_restart_keeps_queued_and_running_jobs(tmp_path, tiny_model_path, db_backend):
    srv = _server(tmp_path, tiny_model_path, db_backend, TUNEGATE_START_WORKERS="false").start()
    client = _client(srv)
    queued = _create(client, n_examples=20, epochs=1, batch=4)
    srv.stop()
    # Restart with workers: the job created while no worker ran is trained.
    srv2 = RunningServer(srv.data_dir, {**srv.env, "TUNEGATE_START_WORKERS": "true"})
    with srv2:
        c2 = srv2.client(client.api_key)
        assert _wait(lambda: c2.fine_tuning.jobs.retrieve(queued.id).status == "succeeded", timeout=600)
        running = _create(c2, n_examples=150, epochs=4)  # long enough to still be running when killed
        _wait(lambda: c2.fine_tuning.jobs.checkpoints.list(running.id).data)
        srv2.stop(kill=True)  # the server dies hard while the job is running
    with RunningServer(srv.data_dir, srv2.env) as srv3:
        c3 = srv3.client(client.api_key)
        done = _wait(
            lambda: (j := c3.fine_tuning.jobs.retrieve(running.id)).status in ("succeeded", "failed") and j, timeout=600
        )
        # Either the orphaned worker was adopted by the new server (alive, fresh heartbeat) and finished,
        # or it stopped with its server and the job resumed from its checkpoint: nothing is lost.
        assert done.status == "succeeded", done.error
        steps = [
            e.data["step"] for e in c3.fine_tuning.jobs.list_events(running.id, limit=100).data if e.type == "metrics"
        ]
        assert max(steps) == 620
