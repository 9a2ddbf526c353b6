"""Continued fine-tuning through the official SDK against a real server (tiny model): a job created
from one's own `ft:` model starts from its adapter (lower first loss than a fresh start), shows the
parent as its `model` and records it in the new adapter's meta.json; checkpoints can be parents too;
another organisation's model, a checkpoint only shared for use, a parent trained on another template
and a LoRA shape that contradicts the parent's are refused with the field named. A DPO job from one's
own `ft:` model trains against the parent as its reference (step 1 at loss log 2) and is served; from
another organisation's model it gets the same error as from a model that does not exist."""

from __future__ import annotations

import io
import json
import math
import tarfile

import httpx
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
                    {"role": "user", "content": f"What colour is box {i}?"},
                    {"role": "assistant", "content": f"Box {i} is red."},
                ]
            }
        )
        for i in range(16)
    )
    + "\n"
).encode()
PAIRS = "".join(
    json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": f"What colour is box {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Box {i} is blue."}],
            "non_preferred_output": [{"role": "assistant", "content": f"Box {i} is red."}],
        }
    )
    + "\n"
    for i in range(10)
).encode()
DPO = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 5, "learning_rate_multiplier": 10}}}
HP = {
    "type": "supervised",
    "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}},
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_path):
    data_dir = tmp_path_factory.mktemp("cont") / "data"
    with RunningServer(data_dir, tiny_server_env(tiny_model_path, TUNEGATE_TORCH_THREADS="1")) as s:
        s.key, s.admin = s.create_key("cont-a"), s.create_key("cont-a", admin=True)
        s.other, s.other_admin = s.create_key("cont-b"), s.create_key("cont-b", admin=True)
        c = s.client(s.key)
        s.file = c.files.create(file=("t.jsonl", io.BytesIO(DATA)), purpose="fine-tune").id
        s.parent = wait_for_job(
            c, c.fine_tuning.jobs.create(model="tiny", training_file=s.file, seed=1, method=HP).id, 600
        )
        assert s.parent.status == "succeeded", s.parent.error
        s.db = sqlalchemy.create_engine(f"sqlite:///{data_dir / 'tunegate.db'}")
        yield s


def _losses(client, job_id: str) -> list[float]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    steps = {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics" and e.data}
    return [steps[k] for k in sorted(steps)]


def test_continue_from_own_model_starts_from_its_adapter_and_records_lineage(srv):
    c = srv.client(srv.key)
    child = c.fine_tuning.jobs.create(model=srv.parent.fine_tuned_model, training_file=srv.file, seed=1, method=HP)
    assert child.model == srv.parent.fine_tuned_model
    child = wait_for_job(c, child.id, 600)
    assert child.status == "succeeded", child.error
    assert child.fine_tuned_model != srv.parent.fine_tuned_model and child.model == srv.parent.fine_tuned_model
    parent, start = _losses(c, srv.parent.id), _losses(c, child.id)[0]
    # The child starts where the parent ended, not where a fresh adapter starts.
    assert parent[-1] < parent[0] and abs(start - parent[-1]) < 0.5 * (parent[0] - parent[-1]), (parent, start)
    r = httpx.get(
        f"{srv.base_url}/models/{child.fine_tuned_model}/content", headers={"Authorization": f"Bearer {srv.key}"}
    )
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        meta = json.load(tar.extractfile([m for m in tar.getmembers() if m.name.endswith("meta.json")][0]))
    assert meta["config"]["parent_model"] == srv.parent.fine_tuned_model
    assert c.chat.completions.create(
        model=child.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    ).choices
    ckpt = c.fine_tuning.jobs.checkpoints.list(srv.parent.id).data[0].fine_tuned_model_checkpoint
    from_ckpt = c.fine_tuning.jobs.create(model=ckpt, training_file=srv.file, method=HP)
    assert from_ckpt.model == ckpt
    c.fine_tuning.jobs.cancel(from_ckpt.id)


def test_refusals_name_the_field(srv):
    other = srv.client(srv.other)
    for model in (srv.parent.fine_tuned_model, "ft:tiny:nobody:x:1"):
        with pytest.raises(openai.BadRequestError) as err:
            other.fine_tuning.jobs.create(model=model, training_file=srv.file, method=HP)
        assert err.value.body["param"] in ("model", "training_file")
    other_file = other.files.create(file=("t.jsonl", io.BytesIO(DATA)), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as err:  # another organisation's model
        other.fine_tuning.jobs.create(model=srv.parent.fine_tuned_model, training_file=other_file, method=HP)
    assert err.value.body["param"] == "model" and err.value.body["code"] == "model_not_available"
    # Shared for use is not shared for training.
    c = srv.client(srv.key)
    ckpt = c.fine_tuning.jobs.checkpoints.list(srv.parent.id).data[0].fine_tuned_model_checkpoint
    with srv.db.connect() as conn:
        project = conn.execute(
            sqlalchemy.text(
                "SELECT p.id FROM projects p JOIN organizations o ON o.id = p.org_id WHERE o.name = 'cont-b'"
            )
        ).scalar_one()
    srv.client(srv.admin).fine_tuning.checkpoints.permissions.create(ckpt, project_ids=[project])
    with pytest.raises(openai.BadRequestError) as err:
        other.fine_tuning.jobs.create(model=ckpt, training_file=other_file, method=HP)
    assert err.value.body["param"] == "model" and "use only" in err.value.body["message"]
    # A LoRA shape that contradicts the parent's.
    with pytest.raises(openai.BadRequestError) as err:
        c.fine_tuning.jobs.create(
            model=srv.parent.fine_tuned_model, training_file=srv.file, method=HP, extra_body={"tunegate": {"lora_r": 4}}
        )
    assert err.value.body["param"] == "tunegate.lora_r"


def test_parent_on_another_template_is_refused(srv):
    c = srv.client(srv.key)
    with srv.db.connect() as conn:
        path = srv.data_dir / (  # the row holds the adapter's storage key, under the data dir
            conn.execute(
                sqlalchemy.text("SELECT adapter_path FROM fine_tuned_models WHERE id = :m"),
                {"m": srv.parent.fine_tuned_model},
            ).scalar_one()
        )
    meta_path = path / "meta.json"
    original = meta_path.read_text()
    meta_path.write_text(json.dumps({**json.loads(original), "template_sha256": "0" * 64}))
    try:
        with pytest.raises(openai.APIStatusError) as err:
            c.fine_tuning.jobs.create(model=srv.parent.fine_tuned_model, training_file=srv.file, method=HP)
        assert err.value.status_code in (400, 404) and err.value.body["param"] == "model"
    finally:
        meta_path.write_text(original)


def test_dpo_from_own_model_uses_it_as_reference_and_others_models_look_unknown(srv):
    c = srv.client(srv.key)
    pairs = c.files.create(file=("p.jsonl", io.BytesIO(PAIRS)), purpose="fine-tune").id
    job = c.fine_tuning.jobs.create(
        model=srv.parent.fine_tuned_model,
        training_file=pairs,
        method=DPO,
        extra_body={"tunegate": {"lora_dropout": 0.0}},  # so step 1's policy is exactly the parent
    )
    assert job.model == srv.parent.fine_tuned_model and job.method.type == "dpo"
    job = wait_for_job(c, job.id, 600)
    assert job.status == "succeeded", job.error
    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = sorted((e.data for e in events if e.type == "metrics" and e.data), key=lambda d: d["step"])
    # The policy starts as the parent and the reference is the parent: loss log 2, zero margin at step 1
    # (against the base as reference the parent, trained on "red", would start far from it).
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert metrics[0]["train_rewards_margin"] == pytest.approx(0, abs=1e-3)
    assert any("the reference is the parent model" in e.message for e in events)
    assert c.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "What colour is box 1?"}], max_tokens=2
    ).choices

    other = srv.client(srv.other)
    other_pairs = other.files.create(file=("p.jsonl", io.BytesIO(PAIRS)), purpose="fine-tune").id
    bodies = []
    for model in (srv.parent.fine_tuned_model, "ft:tiny:nobody:x:ftjob-1"):
        with pytest.raises(openai.BadRequestError) as err:
            other.fine_tuning.jobs.create(model=model, training_file=other_pairs, method=DPO)
        bodies.append({**err.value.body, "message": err.value.body["message"].replace(model, "MODEL")})
    assert bodies[0] == bodies[1] and bodies[0]["param"] == "model", bodies
