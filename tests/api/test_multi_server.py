"""Several API servers on one PostgreSQL database and one data directory act as one service: three
servers, several jobs (tiny model, few steps), the server running one of them killed with SIGKILL
mid-run. Every job ends exactly once, no step is trained twice after its checkpoint, every event is
present, and every server answers the same. (bench/scale.py runs twenty jobs; CI runs six.)"""

from __future__ import annotations

import io
import json
import os
import signal
import time

from sqlalchemy import create_engine, text

from tests.api.test_job_faults import _client, _wait
from tests.conftest import tiny_server_env
from tests.server import RunningServer

N_JOBS = int(os.environ.get("TUNEGATE_TEST_MULTI_SERVER_JOBS", "6"))


def _data(n: int, tag: int) -> bytes:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Job {tag}: what is item {i}?"},
                    {"role": "assistant", "content": f"Item {i} of job {tag}."},
                ]
            }
        )
        + "\n"
        for i in range(n)
    ).encode()


def _parent(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def start_servers(data_dir, env, n):
    servers = []
    for i in range(n):
        srv = RunningServer(data_dir, env)
        srv.log_path = data_dir.parent / f"server-{i}.log"  # one shared data dir, a log per server
        servers.append(srv.start())
    return servers


def test_three_servers_one_database_survive_a_killed_server(tmp_path, tiny_model_path, pg_server):
    url = pg_server.create_database("multi")
    env = tiny_server_env(
        tiny_model_path,
        TUNEGATE_DATABASE_URL=url,
        TUNEGATE_HEARTBEAT_SECONDS="0.5",
        TUNEGATE_HEARTBEAT_TIMEOUT_SECONDS="5",
        TUNEGATE_TORCH_THREADS="1",
    )
    servers = start_servers(tmp_path / "data", env, 3)
    engine = create_engine(url)
    try:
        client = _client(servers[0])
        clients = [s.client(client.api_key) for s in servers]
        jobs = []
        for i in range(N_JOBS):  # created through every server in turn
            c = clients[i % 3]
            # 30 examples (+1 refusal example), batch 1, 2 epochs: 62 steps, a checkpoint after 31, so the
            # second epoch is long enough to be cut short by the kill on any machine.
            f = c.files.create(file=("t.jsonl", io.BytesIO(_data(30, i))), purpose="fine-tune")
            jobs.append(
                c.fine_tuning.jobs.create(
                    model="tiny",
                    training_file=f.id,
                    seed=i,
                    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 1}}},
                ).id
            )

        def victim():
            """A server whose worker is past its first checkpoint (killing it loses training)."""
            with engine.connect() as con:
                rows = con.execute(
                    text(
                        "select j.id, j.worker_pid from jobs j where j.status = 'running' and "
                        "exists (select 1 from checkpoints c where c.job_id = j.id)"
                    )
                ).all()
            for job_id, pid in rows:
                for srv in servers:
                    if pid and _parent(pid) == srv.proc.pid:
                        return srv, job_id
            return None

        killed, killed_job = _wait(victim, timeout=600, every=0.2)
        killed.stop(kill=True)
        alive = [c for s, c in zip(servers, clients) if s is not killed]

        def finished(job_id):
            return alive[0].fine_tuning.jobs.retrieve(job_id).status in ("succeeded", "failed", "cancelled")

        for job_id in jobs:
            _wait(lambda j=job_id: finished(j), timeout=900)
        for job_id in jobs:
            views = [c.fine_tuning.jobs.retrieve(job_id) for c in alive]  # every server answers the same
            assert all(v.model_dump() == views[0].model_dump() for v in views)
            assert views[0].status == "succeeded", (job_id, views[0].error)
            events = list(reversed(list(alive[1].fine_tuning.jobs.list_events(job_id, limit=100))))  # oldest first
            statuses = [e.data["status"] for e in events if e.type == "status"]
            assert statuses.count("succeeded") == 1 and statuses[-1] == "succeeded"  # ended exactly once
            assert statuses.count("running") == 1 + statuses.count("queued") - 1  # one start per queueing
            steps = [e.data["step"] for e in events if e.type == "metrics"]
            total = events[[e.type for e in events].index("metrics")].data["total_steps"]
            assert set(steps) == set(range(1, total + 1))  # every step's event present
            checkpoints = [e.data["step"] for e in events if e.type == "checkpoint"]
            assert len(checkpoints) == len(set(checkpoints)) == 2  # one per epoch, none saved twice
            # A resumed run starts right after the last checkpoint saved before the crash: no step up to a
            # checkpoint is ever trained again (steps after it, lost with the crash, are retrained once).
            saved, last = 0, 0
            for e in events:
                if e.type == "checkpoint":
                    saved = e.data["step"]
                elif e.type == "metrics":
                    assert e.data["step"] == last + 1 or e.data["step"] == saved + 1, (job_id, e.data["step"])
                    assert e.data["step"] > saved
                    last = e.data["step"]
            if job_id != killed_job:
                assert sorted(steps) == list(range(1, total + 1))
        retried = [e.message for e in alive[0].fine_tuning.jobs.list_events(killed_job, limit=100)]
        assert any("interrupted" in m for m in retried) and any("Resuming" in m for m in retried)
    finally:
        engine.dispose()
        for srv in servers:
            srv.stop()


def test_a_live_servers_job_is_not_taken_while_its_lease_holds(tmp_path, tiny_model_path, pg_server):
    """The lease is what keeps a second server off a job whose worker is alive but silent (stopped,
    swapped out, a stalled disk): its heartbeat goes stale, yet its server still holds the job. Without
    the lease the other server would re-queue it and train it twice at once."""
    url = pg_server.create_database("lease")
    env = tiny_server_env(
        tiny_model_path,
        TUNEGATE_DATABASE_URL=url,
        TUNEGATE_HEARTBEAT_SECONDS="0.5",
        TUNEGATE_HEARTBEAT_TIMEOUT_SECONDS="3",
        TUNEGATE_TORCH_THREADS="1",
    )
    servers = start_servers(tmp_path / "data", env, 2)
    engine = create_engine(url)
    try:
        client = _client(servers[0])
        f = client.files.create(file=("t.jsonl", io.BytesIO(_data(30, 0))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=f.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 1}}},
        )

        def row():
            with engine.connect() as con:
                return con.execute(
                    text("select status, worker_pid, heartbeat_at, lease_owner from jobs where id = :id"),
                    {"id": job.id},
                ).one()

        has_metrics = lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id).data)  # noqa: E731
        _wait(lambda: row().status == "running" and row().worker_pid and has_metrics(), timeout=600, every=0.2)
        _, pid, _, owner = row()
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped = time.time()
            # three lease timeouts with the worker silent (and its heartbeat at least that old)
            _wait(
                lambda: min(time.time() - stopped, time.time() - (row().heartbeat_at or 0)) > 3 * 3,
                timeout=60,
                every=0.5,
            )
            assert row().status == "running" and row().lease_owner == owner, "the other server took a leased job"
        finally:
            os.kill(pid, signal.SIGCONT)
        done = _wait(
            lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
            timeout=600,
        )
        assert done.status == "succeeded", done.error
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        assert not [e for e in events if "interrupted" in e.message]  # never re-queued
        assert [e.data["status"] for e in events if e.type == "status"].count("running") == 1
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        assert sorted(steps) == sorted(set(steps))  # no step trained twice
    finally:
        engine.dispose()
        for srv in servers:
            srv.stop()
