"""The Ray executor on a real local Ray cluster (a head and a second node process): a job trains on a
Ray worker with its events naming the node and log; killing the Ray worker process re-queues the
job and it resumes from its last checkpoint; cancel and pause reach the remote worker.

Skipped with the reason when `ray` is not installed (scripts/test.sh installs it: EXTRAS=ray)."""

from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("ray", reason="ray is not installed (EXTRAS=ray bash scripts/setup.sh installs it)")

from tests.api.test_job_faults import _client, _create, _job_row, _wait  # noqa: E402
from tests.conftest import tiny_server_env  # noqa: E402
from tests.ray_cluster import RayCluster  # noqa: E402
from tests.server import RunningServer  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    # The nodes' worker processes import tunegate from this checkout, as an installed node would.
    with RayCluster(cpus_per_node=1, env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")}) as c:
        yield c


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, tiny_model_path, cluster):
    data_dir = tmp_path_factory.mktemp("ray") / "data"
    env = tiny_server_env(
        tiny_model_path,
        TUNEGATE_EXECUTOR="ray",
        TUNEGATE_RAY_ADDRESS=cluster.address,
        TUNEGATE_RAY_NUM_CPUS="1",
        TUNEGATE_WORKER_CONCURRENCY="2",
        TUNEGATE_TORCH_THREADS="1",
        TUNEGATE_HEARTBEAT_SECONDS="0.5",
        TUNEGATE_HEARTBEAT_TIMEOUT_SECONDS="10",
    )
    with RunningServer(data_dir, env) as srv:
        srv.c = _client(srv)
        yield srv


def _messages(client, job_id):
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]


def _finished(client, job_id, timeout=600):
    return _wait(
        lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled") and j,
        timeout=timeout,
    )


def test_job_runs_on_the_cluster_and_survives_a_killed_ray_worker(ray_server):
    client = ray_server.c
    job = _create(client, n_examples=30, epochs=3, batch=1)
    _wait(
        lambda: (
            client.fine_tuning.jobs.checkpoints.list(job.id).data
            or client.fine_tuning.jobs.retrieve(job.id).status != "running"
            and client.fine_tuning.jobs.retrieve(job.id).status not in ("validating_files", "queued")
        )
    )
    status, pid, _ = _job_row(ray_server, job.id)
    assert status == "running" and pid
    os.kill(pid, signal.SIGKILL)  # the Ray worker process (on whichever node; both are this machine)
    done = _finished(client, job.id)
    assert done.status == "succeeded", done.error
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))  # every page
    started = [e for e in events if "Ray node" in e.message]
    assert len(started) == 2 and all(e.data["worker_log"].endswith("worker.log") for e in started)
    assert (ray_server.data_dir / "artifacts" / job.id / "worker.log").stat().st_size > 0
    msgs = _messages(client, job.id)
    assert any("interrupted" in m for m in msgs) and any("Resuming" in m for m in msgs)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert max(m["step"] for m in metrics) == metrics[0]["total_steps"] >= 90  # trained to the end


def test_cancel_and_pause_reach_the_remote_worker(ray_server):
    client = ray_server.c
    to_cancel = _create(client, n_examples=200, epochs=5)
    to_pause = _create(client, n_examples=200, epochs=5)
    has_metrics = lambda j: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(j).data)  # noqa: E731
    _wait(lambda: has_metrics(to_cancel.id) and has_metrics(to_pause.id))  # both running, one per node
    client.fine_tuning.jobs.cancel(to_cancel.id)
    client.fine_tuning.jobs.pause(to_pause.id)
    assert _finished(client, to_cancel.id, timeout=180).status == "cancelled"
    assert _wait(lambda: client.fine_tuning.jobs.retrieve(to_pause.id).status == "paused", timeout=180)
    assert _job_row(ray_server, to_cancel.id)[1] is None
    client.fine_tuning.jobs.cancel(to_pause.id)
