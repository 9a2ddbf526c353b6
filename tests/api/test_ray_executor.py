"""The Ray executor on a real local Ray cluster (a head and a second node process): a job trains on a
Ray worker with its events naming the node and log; killing the Ray worker process, or the whole
second node, re-queues the job and it resumes from its last checkpoint; cancel and pause reach the
remote worker; a 2-rank job is launched by Ray Train's TorchTrainer and equals one process with the
whole batch; a node without the shared data directory fails the job with `storage_not_shared`; with
an object store the Ray task works in its node's scratch folder and only through the store.

Skipped with the reason when `ray` is not installed (scripts/test.sh installs it: EXTRAS=ray)."""

from __future__ import annotations

import os
import signal

import openai
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


def test_data_parallel_job_is_launched_by_ray_train_and_equals_one_process(ray_server, tmp_path):
    """`tunegate.n_workers: 2` with the Ray executor: Ray Train's TorchTrainer starts the two ranks
    (one CPU each, so one per node here, gloo), rank 0 reports every step once, and the job trains
    the same run as one process with the whole batch: the same losses and the same adapter."""
    import io
    import json

    from tests.api.test_job_faults import _data
    from tests.unit.test_train_distributed import _assert_same_adapter
    from tests.unit.test_train_recipe import _losses, _run
    from tunegate.train.config import TrainConfig

    client = ray_server.c
    f = client.files.create(file=("t.jsonl", io.BytesIO(_data(24))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=f.id,
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}},
        # no dropout: its masks depend on which rank sees which example
        extra_body={"tunegate": {"n_workers": 2, "lora_dropout": 0.0}},
    )
    done = _finished(client, job.id)
    assert done.status == "succeeded", done.error
    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))))  # oldest first
    launched = [e for e in events if e.data and e.data.get("launcher") == "ray_train"]
    assert len(launched) == 1 and launched[0].data["world_size"] == 2
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] >= 6  # every step once, from rank 0
    assert len(client.fine_tuning.jobs.checkpoints.list(job.id).data) == 2  # one per epoch, written once
    # The same config (meta.json beside the adapter), trained by one process with the whole batch:
    adapter = ray_server.data_dir / "artifacts" / job.id / "adapter"
    config = TrainConfig.from_dict(json.loads((adapter / "meta.json").read_text())["config"])
    assert config.batch_size == 8 and config.lora_dropout == 0.0
    one, one_events = _run(config, tmp_path / "one")
    assert [e.data["train_loss"] for e in events if e.type == "metrics"] == pytest.approx(_losses(one_events), rel=1e-4)
    _assert_same_adapter(one.adapter_dir, adapter)


def test_a_killed_node_requeues_its_job_which_resumes_on_a_new_node(ray_server, cluster):
    """The whole second node dies (its raylet and Ray workers, SIGKILL), not only the worker: its job
    goes back to the queue and resumes from its last checkpoint on the node that replaces it."""
    client = ray_server.c
    jobs = [_create(client, n_examples=30, epochs=3, batch=1) for _ in range(2)]  # one per node (1 CPU each)
    second = cluster.node_ids[-1]

    def on_second_node_past_a_checkpoint():
        for job in jobs:
            started = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "Ray node" in e.message]
            if started and started[0].data["ray_node_id"] == second:
                return client.fine_tuning.jobs.checkpoints.list(job.id).data and job
        return None

    victim = _wait(on_second_node_past_a_checkpoint)
    cluster.kill_node()
    replacement = cluster.add_node()
    done = _finished(client, victim.id)
    assert done.status == "succeeded", done.error
    events = list(client.fine_tuning.jobs.list_events(victim.id, limit=100))
    nodes = [e.data["ray_node_id"] for e in reversed(events) if "Ray node" in e.message]
    assert nodes[0] == second and nodes[-1] in (replacement, cluster.node_ids[0]) and len(nodes) == 2
    msgs = _messages(client, victim.id)
    assert any("interrupted" in m for m in msgs) and any("Resuming" in m for m in msgs)
    oldest_first = list(reversed(events))
    cut = next(i for i, e in enumerate(oldest_first) if "interrupted" in e.message)
    saved = max(e.data["step"] for e in oldest_first[:cut] if e.type == "checkpoint")
    resumed = next(e.data["step"] for e in oldest_first[cut:] if e.type == "metrics")
    assert resumed == saved + 1  # from the last checkpoint, not from the start
    metrics = [e.data for e in events if e.type == "metrics"]
    assert max(m["step"] for m in metrics) == metrics[0]["total_steps"] >= 90  # trained to the end
    other = next(j for j in jobs if j.id != victim.id)
    assert _finished(client, other.id).status == "succeeded"


def test_a_node_without_the_shared_storage_fails_the_job_naming_it(tmp_path, cluster):
    """A node that does not mount the data directory (here: a Ray node in a mount namespace of its
    own, where that folder is an empty one) fails the job with `storage_not_shared` before it reads
    or writes a file, instead of training into a folder no server sees."""
    import shutil

    import ray

    from tests.unit.test_jobs_lifecycle import _job
    from tunegate.db import Job, open_database
    from tunegate.jobs.executors.ray import _run_job
    from tunegate.settings import Settings
    from tunegate.storage import FileStorage

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a node without the mount needs a mount namespace (root and unshare)")
    data = tmp_path / "data"  # the storage; the database lives beside it, reachable from every node
    settings = Settings(data_dir=data, database_url=f"sqlite:///{tmp_path / 'tunegate.db'}")
    settings.ensure_dirs()
    db = open_database(settings.db_url)
    job_id = _job(db, "running")
    storage_id = FileStorage.from_settings(settings).identity()
    cluster.add_node(cpus=0, resources='{"no_mount": 1}', hide=data)
    ray.init(address=cluster.address, namespace="tunegate-test", logging_level="ERROR")
    try:
        task = ray.remote(_run_job).options(num_cpus=0, resources={"no_mount": 1}, max_retries=0)
        assert ray.get(task.remote(job_id, settings.model_dump_json(), storage_id), timeout=300) == 0
    finally:
        ray.shutdown()
        cluster.kill_node()
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.error["code"] == "storage_not_shared"
        assert str(data) in job.error["message"] and "no storage marker" in job.error["message"]
        assert job.error["message"].startswith("Ray node ")
    assert not (data / "artifacts" / job_id).exists()  # nothing was written for it


def test_with_an_object_store_the_ray_worker_uses_only_the_store(tmp_path, tiny_model_path, cluster, s3_server):
    """TUNEGATE_STORAGE_URL: the Ray task fetches its inputs into its node's scratch folder and
    pushes its outputs (and its log) to the store; the server serves the model from its own copy."""
    scratch = tmp_path / "node-scratch"
    env = tiny_server_env(
        tiny_model_path,
        TUNEGATE_EXECUTOR="ray",
        TUNEGATE_RAY_ADDRESS=cluster.address,
        TUNEGATE_RAY_NUM_CPUS="1",
        TUNEGATE_TORCH_THREADS="1",
        TUNEGATE_HEARTBEAT_SECONDS="0.5",
        TUNEGATE_HEARTBEAT_TIMEOUT_SECONDS="10",
        TUNEGATE_REGRESSION_CHECK="off",
        TUNEGATE_WORKER_SCRATCH_DIR=str(scratch),
        **s3_server.env("ray"),
    )
    with RunningServer(tmp_path / "data", env) as srv:
        client = _client(srv)
        job = _create(client, n_examples=16, epochs=1, batch=4)
        done = _finished(client, job.id)
        assert done.status == "succeeded", done.error
        fs, prefix = s3_server.fs(), f"{s3_server.bucket}/ray/artifacts/{job.id}"
        stored = {o[len(prefix) + 1 :] for o, i in fs.find(prefix, detail=True).items() if i.get("type") == "file"}
        assert {"adapter/adapter_model.safetensors", "results.csv", "worker.log"} <= stored
        assert (scratch / "artifacts" / job.id / "adapter").is_dir()
        assert not (srv.data_dir / "artifacts" / job.id / "adapter").exists()  # not until it is served
        r = client.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert r.choices[0].message.content is not None
        assert (srv.data_dir / "artifacts" / job.id / "adapter" / "adapter_model.safetensors").is_file()
        # Not supported yet with an object store: Ray Train ranks on other nodes (400, named).
        with pytest.raises(openai.BadRequestError) as dp:
            client.fine_tuning.jobs.create(
                model="tiny", training_file=job.training_file, extra_body={"tunegate": {"n_workers": 2}}
            )
        assert dp.value.body["param"] == "tunegate.n_workers" and "TUNEGATE_STORAGE_URL" in dp.value.body["message"]
