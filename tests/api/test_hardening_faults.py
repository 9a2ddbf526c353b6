"""Hardening against crashes and gaps in the gate: a checkpoint of a cancelled job is never served
before a gate run on it passes, a damaged adapter is refused before it is served or downloaded,
and a server killed with SIGKILL mid-upload / mid-validation leaves nothing behind after restart."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import time

import httpx

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


def _wait(fn, timeout=600, every=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _h(key):
    return {"Authorization": f"Bearer {key}"}


def test_checkpoint_of_a_cancelled_job_is_served_only_after_a_passing_gate(tmp_path, tiny_model_path):
    env = tiny_server_env(tiny_model_path, TUNEGATE_TORCH_THREADS="1")
    with RunningServer(tmp_path / "data", env) as srv:
        admin, user = srv.create_key("gated", admin=True), srv.create_key("gated")
        r = httpx.post(
            srv.base_url + "/admin/policy",
            headers=_h(admin),
            json={
                "gate": {"n_harmful": 8, "n_benign": 4, "max_new_tokens": 8},
                "runtime": {"input": "off", "output": "off"},
            },
        )
        assert r.status_code == 200, r.text
        client = srv.client(user)
        f = client.files.create(file=("t.jsonl", io.BytesIO(_data(40))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=f.id,
            seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1}}},
        )
        ckpt = _wait(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data)[0]
        client.fine_tuning.jobs.cancel(job.id)
        _wait(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "cancelled")
        model = ckpt.fine_tuned_model_checkpoint

        # Never gated: not served, not downloadable, not listed.
        chat = httpx.post(
            srv.base_url + "/chat/completions",
            headers=_h(user),
            timeout=120,
            json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        )
        assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_gated", chat.text
        assert f"/checkpoints/{ckpt.id}/gate" in chat.json()["error"]["message"]
        download = httpx.get(srv.base_url + f"/models/{model}/content", headers=_h(user))
        assert download.status_code == 404 and download.json()["error"]["code"] == "model_not_gated"
        assert model not in [m.id for m in client.models.list().data]

        # Gate on demand, then poll for the decision.
        gate_url = srv.base_url + f"/fine_tuning/jobs/{job.id}/checkpoints/{ckpt.id}/gate"
        started = httpx.post(gate_url, headers=_h(user))
        assert started.status_code == 202 and started.json()["status"] == "running", started.text
        decision = _wait(
            lambda: (g := httpx.get(gate_url, headers=_h(user)).json())["status"] != "running" and g,
            timeout=900,
            every=1,
        )
        assert decision["status"] == "passed", decision  # a benign fine-tune passes (the gate's other requirement)
        events = [
            e
            for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data
            if e.type == "moderation_checks" and (e.data or {}).get("check") == "checkpoint_gate"
        ]
        assert events and events[0].data["decision"] == decision["status"]
        assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"  # the job itself is unchanged
        chat = httpx.post(
            srv.base_url + "/chat/completions",
            headers=_h(user),
            timeout=120,
            json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        )
        assert chat.status_code == 200, chat.text
        assert model in [m.id for m in client.models.list().data]
        assert httpx.get(srv.base_url + f"/models/{model}/content", headers=_h(user)).status_code == 200
        audit = httpx.get(srv.base_url + "/admin/audit", headers=_h(admin), params={"action": "checkpoint.gated"})
        assert audit.json()["data"][0]["object_id"] == model

        # A damaged adapter is refused before it reaches the engine or a download.
        weights = (
            srv.data_dir
            / "artifacts"
            / job.id
            / "checkpoints"
            / f"step-{ckpt.step_number}"
            / "adapter_model.safetensors"
        )
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        for r in (
            httpx.post(
                srv.base_url + "/chat/completions",
                headers=_h(user),
                timeout=120,
                json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            ),
            httpx.get(srv.base_url + f"/models/{model}/content", headers=_h(user)),
        ):
            assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_corrupted", r.text
        base = httpx.post(
            srv.base_url + "/chat/completions",
            headers=_h(user),
            timeout=120,
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        )
        assert base.status_code == 200, base.text


def test_sigkill_mid_upload_and_mid_validation_leaves_nothing_behind(tmp_path, tiny_model_path):
    env = tiny_server_env(tiny_model_path, TUNEGATE_START_WORKERS="false")
    srv = RunningServer(tmp_path / "data", env).start()
    key = srv.create_key("crash")
    try:
        # An upload cut off by the server's death: its temp file is on disk when the server dies.
        sock = socket.create_connection(("127.0.0.1", srv.port))
        boundary = b"xyzzy"
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary="
            + boundary
            + b"\r\nContent-Length: 10000000\r\n\r\n--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
            + _data(200)
        )
        tmp_dir = srv.data_dir / "files" / ".tmp"
        _wait(lambda: list(tmp_dir.glob(".upload-*")), timeout=30, every=0.1)
        # A file whose validation is cut off: uploaded, then the server dies before it is settled.
        f = srv.client(key).files.create(file=("v.jsonl", io.BytesIO(_data(30))), purpose="fine-tune")
        srv.stop(kill=True)
        sock.close()
        # SIGKILL can land after the validation finished; put the row in the state a kill during it leaves.
        con = sqlite3.connect(srv.data_dir / "tunegate.db")
        con.execute("update files set status='uploaded', validation=null, status_details=null where id=?", (f.id,))
        con.commit()
        con.close()
        assert list(tmp_dir.glob(".upload-*"))
    finally:
        srv.stop(kill=True)
    with RunningServer(srv.data_dir, srv.env) as again:
        assert not list(tmp_dir.glob(".upload-*")), "the orphaned temp upload was not removed at start"
        done = _wait(lambda: (o := again.client(key).files.retrieve(f.id)).status != "uploaded" and o, timeout=120)
        assert done.status == "processed", done
        report = httpx.get(again.base_url + f"/files/{f.id}/validation", headers=_h(key)).json()
        assert report["status"] == "completed" and report["valid"] is True
