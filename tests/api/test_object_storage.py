"""Files and artifacts in an S3-compatible object store (a real SeaweedFS server, tests/s3.py): the
job flow where the worker keeps its copies in its own scratch folder and a second API server with
its own local folder shares only the database and the store; integrity checks on damaged objects;
a worker killed with SIGKILL resumes from the checkpoint in the store; a bad store stops the start.
Tiny model; the post-training gate is off (the gate is tested in test_safety_api.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys

import httpx
import openai
import pytest

from tests.api.test_job_faults import _data, _job_row, _statuses, _wait
from tests.conftest import tiny_server_env
from tests.server import RunningServer, free_port, wait_for_job


def _objects(fs, prefix: str) -> list[str]:
    return sorted(o for o, info in fs.find(prefix, detail=True).items() if info.get("type") == "file")


def _valid() -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is thing {i}?"},
                {"role": "assistant", "content": f"Thing {i}."},
            ]
        }
        for i in range(10)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _env(tiny_model_path, s3_server, prefix: str, scratch, **extra) -> dict[str, str]:
    return tiny_server_env(
        tiny_model_path,
        TUNEGATE_HEARTBEAT_SECONDS="0.5",
        TUNEGATE_HEARTBEAT_TIMEOUT_SECONDS="5",
        TUNEGATE_TORCH_THREADS="1",
        TUNEGATE_REGRESSION_CHECK="off",
        TUNEGATE_WORKER_SCRATCH_DIR=str(scratch),
        **s3_server.env(prefix),
        **extra,
    )


def _gate_off_client(srv, org: str):
    admin = srv.create_key(org, admin=True)
    r = httpx.post(
        srv.base_url + "/admin/policy", json={"gate": {"enabled": False}}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 200, r.text
    return srv.client(srv.create_key(org))


def test_job_flow_through_the_object_store_on_two_servers(tmp_path, tiny_model_path, s3_server):
    fs, base = s3_server.fs(), f"{s3_server.bucket}/flow"
    env = _env(tiny_model_path, s3_server, "flow", tmp_path / "worker-scratch")
    with RunningServer(tmp_path / "a", env) as a:
        client = _gate_off_client(a, "s3org")
        data = _data(24)
        f = client.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=f.id,
            validation_file=client.files.create(file=("v.jsonl", io.BytesIO(_valid())), purpose="fine-tune").id,
            seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        )
        done = wait_for_job(client, job.id, timeout=600, poll=0.5)
        assert done.status == "succeeded", done.error
        # The store holds every output under its key (the upload, the checkpoints, the adapter, the
        # result CSV, the screening report); rows carry the keys.
        keys = [o[len(base) + 1 :] for o in _objects(fs, base)]
        org_files = [k for k in keys if k.startswith("files/") and k.endswith("/" + f.id)]
        assert len(org_files) == 1 and fs.cat(f"{base}/{org_files[0]}") == data
        art = f"artifacts/{job.id}/"
        assert {f"{art}adapter/adapter_model.safetensors", f"{art}adapter/sha256.json", f"{art}results.csv"} <= set(
            keys
        )
        assert f"{art}screening_report.json" in keys
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints
        steps = sorted({k.split("/")[3] for k in keys if k.startswith(art + "checkpoints/")})
        assert steps == sorted(f"step-{c.step_number}" for c in checkpoints)
        assert any(k.startswith("files/") and k.endswith(done.result_files[0]) for k in keys)
        # The worker trained in its own scratch folder, never in server A's data directory.
        assert (tmp_path / "worker-scratch" / "artifacts" / job.id / "adapter").is_dir()
        assert not (a.data_dir / "artifacts" / job.id / "adapter").exists()
        assert not (a.data_dir / "artifacts" / job.id / "checkpoints").exists()
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"sqlite:///{a.data_dir / 'tunegate.db'}")
        with engine.connect() as con:
            adapter = con.execute(sqlalchemy.text("select adapter_path from fine_tuned_models")).scalar_one()
            paths = list(con.execute(sqlalchemy.text("select path from checkpoints")).scalars())
        engine.dispose()
        assert adapter == f"{art}adapter" and all(p.startswith(art + "checkpoints/step-") for p in paths)
        api_key = client.api_key

        # Damage objects nobody has a local copy of yet: the training file's bytes (same size) and the
        # first checkpoint's weights.
        good_file = fs.cat(f"{base}/{org_files[0]}")
        fs.pipe(f"{base}/{org_files[0]}", b"x" * len(good_file))
        weights = f"{base}/{art}checkpoints/step-{checkpoints[0].step_number}/adapter_model.safetensors"
        good_weights = fs.cat(weights)
        fs.pipe(weights, bytes(len(good_weights)))

    # Server B: its own (empty) local folder, the same database and store, no workers.
    env_b = {**env, "TUNEGATE_DATABASE_URL": f"sqlite:///{a.data_dir / 'tunegate.db'}", "TUNEGATE_START_WORKERS": "0"}
    with RunningServer(tmp_path / "b", env_b) as b:
        cb = b.client(api_key)
        # The ft: model: B fetches the adapter into its cache, checks it, serves it.
        r = cb.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": "Tell me about item 3."}], max_tokens=5
        )
        assert r.choices[0].message.content is not None
        assert (b.data_dir / "artifacts" / job.id / "adapter" / "adapter_model.safetensors").is_file()
        # The result file and the screening report, written by the worker and by server A.
        csv = cb.files.content(done.result_files[0]).read().decode()
        assert csv.splitlines()[0].startswith("step,train_loss")
        report = httpx.get(
            b.base_url + f"/fine_tuning/jobs/{job.id}/safety_report", headers={"Authorization": f"Bearer {api_key}"}
        ).json()
        assert report["screening"] is not None
        # Damaged objects answer 409 as damaged files on disk do.
        with pytest.raises(openai.ConflictError) as bad_file:
            cb.files.content(f.id)
        assert bad_file.value.body["code"] == "file_corrupted"
        ckpt = checkpoints[0].fine_tuned_model_checkpoint
        with pytest.raises(openai.ConflictError) as bad_ckpt:
            cb.chat.completions.create(model=ckpt, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert bad_ckpt.value.body["code"] == "adapter_corrupted"
        # Restored in the store: the damaged copy was dropped, so the next request fetches it again.
        fs.pipe(weights, good_weights)
        fs.pipe(f"{base}/{org_files[0]}", good_file)
        assert cb.files.content(f.id).read() == data
        r = cb.chat.completions.create(model=ckpt, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r.choices[0].message.content is not None
        # The checkpoint's adapter downloads from B too.
        dl = httpx.get(b.base_url + f"/models/{ckpt}/content", headers={"Authorization": f"Bearer {api_key}"})
        assert dl.status_code == 200 and dl.content[:2] == b"\x1f\x8b", dl.text[:300]


def test_killed_worker_resumes_from_the_checkpoint_in_the_store(tmp_path, tiny_model_path, s3_server):
    scratch = tmp_path / "worker-scratch"
    env = _env(tiny_model_path, s3_server, "resume", scratch)
    fs, base = s3_server.fs(), f"{s3_server.bucket}/resume"
    with RunningServer(tmp_path / "data", env) as srv:
        client = _gate_off_client(srv, "s3resume")
        f = client.files.create(file=("t.jsonl", io.BytesIO(_data(40))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=f.id,
            seed=3,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1}}},
        )
        first = _wait(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data)[0]
        status, pid, _ = _job_row(srv, job.id)
        assert status == "running" and pid
        os.kill(pid, signal.SIGKILL)
        assert _objects(fs, f"{base}/artifacts/{job.id}/checkpoints/step-{first.step_number}")
        # The node's local copies are gone too: the next worker can only resume from the store.
        shutil.rmtree(scratch / "artifacts" / job.id, ignore_errors=True)
        done = _wait(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j)
        assert done.status == "succeeded", done.error
        assert ("running", "queued") in _statuses(client, job.id)
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        assert any(e.message == "Resuming training from the last checkpoint." for e in events)
        saved = [e.data["step"] for e in events if e.type == "checkpoint"]
        assert saved and len(saved) == len(set(saved))  # none saved twice: training resumed
        metrics = [e.data for e in events if e.type == "metrics"]
        assert max(m["step"] for m in metrics) == metrics[0]["total_steps"]
        # Pruned checkpoints left the store as they left the worker's folder.
        kept = {c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data}
        stored = {
            int(o.split("/step-")[1].split("/")[0]) for o in _objects(fs, f"{base}/artifacts/{job.id}/checkpoints")
        }
        assert stored == kept


def test_a_bad_storage_url_stops_the_server_naming_the_setting(tmp_path, tiny_model_path, s3_server):
    for url, endpoint, expected in (
        ("gs://bucket/x", s3_server.endpoint_url, "unsupported storage"),
        ("s3://tunegate-test/x", f"http://127.0.0.1:{free_port()}", "is not reachable"),
    ):
        env = {
            **os.environ,
            **tiny_server_env(tiny_model_path),
            **s3_server.env("x"),
            "TUNEGATE_STORAGE_URL": url,
            "TUNEGATE_S3_ENDPOINT_URL": endpoint,
            "TUNEGATE_DATA_DIR": str(tmp_path / "d"),
            "TUNEGATE_PORT": str(free_port()),
        }
        out = subprocess.run(
            [sys.executable, "-m", "tunegate.cli.main", "serve"], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 2, out.stderr[-2000:]
        assert "TUNEGATE_STORAGE_URL" in out.stderr and expected in out.stderr, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
