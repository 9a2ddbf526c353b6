"""Checkpoint permissions through the official SDK against a real server (tiny model): an admin of
the owner shares a checkpoint with another organisation's project, which can then chat with it but
never sees the owner's job, files or adapter; someone else's checkpoint, bad project ids and a
checkpoint whose model the gate did not pass are refused; deleting the permission ends the access."""

from __future__ import annotations

import io
import json

import openai
import pytest
import sqlalchemy

from tests.conftest import tiny_server_env
from tests.server import RunningServer, wait_for_job

DATA = (
    "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Tell me about item {i}."},
                    {"role": "assistant", "content": f"Item {i} is a fine item."},
                ]
            }
        )
        for i in range(12)
    )
    + "\n"
).encode()
MSGS = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_path):
    data_dir = tmp_path_factory.mktemp("perm") / "data"
    with RunningServer(data_dir, tiny_server_env(tiny_model_path, TUNEGATE_TORCH_THREADS="1")) as s:
        s.owner, s.owner_admin = s.create_key("perm-a"), s.create_key("perm-a", admin=True)
        s.other, s.other_admin = s.create_key("perm-b"), s.create_key("perm-b", admin=True)
        s.third = s.create_key("perm-c")
        c = s.client(s.owner)
        f = c.files.create(file=("t.jsonl", io.BytesIO(DATA)), purpose="fine-tune")
        job = wait_for_job(
            c,
            c.fine_tuning.jobs.create(
                model="tiny",
                training_file=f.id,
                suffix="share",
                method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
            ).id,
            600,
        )
        assert job.status == "succeeded", job.error
        s.job, s.file_id = job, f.id
        s.ckpt = c.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
        s.db = sqlalchemy.create_engine(f"sqlite:///{data_dir / 'tunegate.db'}")
        yield s


def _project(srv, org: str) -> str:
    with srv.db.connect() as conn:
        return conn.execute(
            sqlalchemy.text("SELECT p.id FROM projects p JOIN organizations o ON o.id = p.org_id WHERE o.name = :n"),
            {"n": org},
        ).scalar_one()


def test_share_use_list_and_revoke(srv):
    other = srv.client(srv.other)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=srv.ckpt, messages=MSGS, max_tokens=2)
    with pytest.raises(openai.PermissionDeniedError):  # a regular key of the owner may not share
        srv.client(srv.owner).fine_tuning.checkpoints.permissions.create(
            srv.ckpt, project_ids=[_project(srv, "perm-b")]
        )
    admin = srv.client(srv.owner_admin)
    page = admin.fine_tuning.checkpoints.permissions.create(srv.ckpt, project_ids=[_project(srv, "perm-b")])
    perm = page.data[0]
    assert perm.object == "checkpoint.permission" and perm.project_id == _project(srv, "perm-b")
    listed = admin.fine_tuning.checkpoints.permissions.retrieve(srv.ckpt)
    assert [p.id for p in listed.data] == [perm.id] and listed.object == "list"

    r = other.chat.completions.create(model=srv.ckpt, messages=MSGS, max_tokens=2)
    assert r.model == srv.ckpt and r.choices
    assert srv.ckpt in [m.id for m in other.models.list()]
    # Nothing else of the owner's is visible: job, its events and checkpoints, the file, the adapter.
    for call in (
        lambda: other.fine_tuning.jobs.retrieve(srv.job.id),
        lambda: other.files.retrieve(srv.file_id),
        lambda: other.fine_tuning.jobs.checkpoints.list(srv.job.id),
        lambda: other.models.retrieve(srv.job.fine_tuned_model),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    import httpx

    dl = httpx.get(f"{srv.base_url}/models/{srv.ckpt}/content", headers={"Authorization": f"Bearer {srv.other}"})
    assert dl.status_code == 403 and dl.json()["error"]["param"] == "model"
    with pytest.raises(openai.NotFoundError):  # a third organisation still cannot use it
        srv.client(srv.third).chat.completions.create(model=srv.ckpt, messages=MSGS, max_tokens=2)

    deleted = admin.fine_tuning.checkpoints.permissions.delete(perm.id, fine_tuned_model_checkpoint=srv.ckpt)
    assert deleted.deleted and deleted.object == "checkpoint.permission"
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=srv.ckpt, messages=MSGS, max_tokens=2)


def test_someone_elses_checkpoint_and_bad_input(srv):
    # Another organisation's admin cannot share, list or delete permissions of this checkpoint.
    other_admin = srv.client(srv.other_admin)
    for call in (
        lambda: other_admin.fine_tuning.checkpoints.permissions.create(srv.ckpt, project_ids=[_project(srv, "perm-b")]),
        lambda: other_admin.fine_tuning.checkpoints.permissions.retrieve(srv.ckpt),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["param"] == "fine_tuned_model_checkpoint"
    admin = srv.client(srv.owner_admin)
    with pytest.raises(openai.BadRequestError) as err:
        admin.fine_tuning.checkpoints.permissions.create(srv.ckpt, project_ids=["proj-nope"])
    assert err.value.body["param"] == "project_ids[0]"
    with pytest.raises(openai.NotFoundError) as err:
        admin.fine_tuning.checkpoints.permissions.delete("cp-nope", fine_tuned_model_checkpoint=srv.ckpt)
    assert err.value.body["param"] == "permission_id"


def test_a_model_the_gate_did_not_pass_is_never_shared(srv):
    admin = srv.client(srv.owner_admin)
    perm = admin.fine_tuning.checkpoints.permissions.create(srv.ckpt, project_ids=[_project(srv, "perm-b")]).data[0]
    with srv.db.begin() as conn:  # the gate blocks the job's model (as after an unsafe_model verdict)
        conn.execute(
            sqlalchemy.text("UPDATE fine_tuned_models SET deployable = 0 WHERE job_id = :j"), {"j": srv.job.id}
        )
    try:
        with pytest.raises(openai.BadRequestError) as err:
            admin.fine_tuning.checkpoints.permissions.create(srv.ckpt, project_ids=[_project(srv, "perm-c")])
        assert err.value.body["code"] == "checkpoint_not_shareable"
        other = srv.client(srv.other)
        with pytest.raises(openai.NotFoundError):  # an existing permission does not bypass the gate either
            other.chat.completions.create(model=srv.ckpt, messages=MSGS, max_tokens=2)
        assert srv.ckpt not in [m.id for m in other.models.list()]
    finally:
        with srv.db.begin() as conn:
            conn.execute(
                sqlalchemy.text("UPDATE fine_tuned_models SET deployable = 1 WHERE job_id = :j"), {"j": srv.job.id}
            )
        admin.fine_tuning.checkpoints.permissions.delete(perm.id, fine_tuned_model_checkpoint=srv.ckpt)
