"""Jobs API contract through the official openai SDK (no training: workers are off on this server)."""

import io
import json

import httpx
import openai
import pytest

from tests.conftest import tiny_server_env
from tests.server import RunningServer

GOOD = (
    "\n".join(
        json.dumps({"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]})
        for i in range(12)
    )
    + "\n"
).encode()


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory, tiny_model_path, db_backend):
    data_dir = tmp_path_factory.mktemp("jobs-idle") / "data"
    with RunningServer(
        data_dir, tiny_server_env(tiny_model_path, TUNEGATE_START_WORKERS="false", **db_backend())
    ) as srv:
        srv.key_a, srv.key_b = srv.create_key("org-a"), srv.create_key("org-b")
        yield srv


@pytest.fixture(scope="module")
def train_file(idle_server):
    return idle_server.client(idle_server.key_a).files.create(file=("t.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")


def test_create_retrieve_list_and_object_shape(idle_server, train_file):
    c = idle_server.client(idle_server.key_a)
    job = c.fine_tuning.jobs.create(
        model="tiny",
        training_file=train_file.id,
        suffix="my-model",
        seed=7,
        metadata={"team": "nlp"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.seed == 7
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.n_epochs == 2
    assert job.metadata == {"team": "nlp"} and job.fine_tuned_model is None
    other = c.fine_tuning.jobs.create(model="tiny", training_file=train_file.id, hyperparameters={"batch_size": 4})
    assert other.method.supervised.hyperparameters.batch_size == 4
    assert c.fine_tuning.jobs.retrieve(job.id).id == job.id
    listed = c.fine_tuning.jobs.list(limit=1)
    assert listed.data[0].id == other.id and listed.has_more
    assert c.fine_tuning.jobs.list(after=other.id, limit=5).data[0].id == job.id
    filtered = c.fine_tuning.jobs.list(metadata={"team": "nlp"})
    assert [j.id for j in filtered.data] == [job.id]
    events = c.fine_tuning.jobs.list_events(job.id)
    assert events.data and (events.data[-1].type, events.data[-1].data) == (
        "status",
        {"status": "validating_files", "previous": None},
    )
    assert c.fine_tuning.jobs.checkpoints.list(job.id).data == []


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "nope"}, "model"),
        ({"training_file": "file-missing"}, "training_file"),
        ({"validation_file": "file-missing"}, "validation_file"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"suffix": "has:colon"}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "method.supervised.hyperparameters.n_epochs",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 1000}}}},
            "method.supervised.hyperparameters.batch_size",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": -1}}}},
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
        ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
        ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader"),
        ({"method": {"type": "magic"}}, "method.type"),
        ({"model": 5}, "model"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
    ],
)
def test_bad_parameters_name_the_param(idle_server, train_file, body, param):
    payload = {"model": "tiny", "training_file": train_file.id, **body}
    r = httpx.post(
        idle_server.base_url + "/fine_tuning/jobs",
        json=payload,
        headers={"Authorization": f"Bearer {idle_server.key_a}"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_missing_fields_and_bad_json(idle_server):
    h = {"Authorization": f"Bearer {idle_server.key_a}"}
    r = httpx.post(idle_server.base_url + "/fine_tuning/jobs", json={"model": "tiny"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    r = httpx.post(
        idle_server.base_url + "/fine_tuning/jobs",
        content=b"{not json\xff",
        headers={**h, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_other_org_and_state_machine(idle_server, train_file):
    a, b = idle_server.client(idle_server.key_a), idle_server.client(idle_server.key_b)
    job = a.fine_tuning.jobs.create(model="tiny", training_file=train_file.id)
    for call in (
        lambda: b.fine_tuning.jobs.retrieve(job.id),
        lambda: b.fine_tuning.jobs.cancel(job.id),
        lambda: b.fine_tuning.jobs.list_events(job.id),
        lambda: b.fine_tuning.jobs.checkpoints.list(job.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as e:  # another org's file is as unknown as a missing one
        b.fine_tuning.jobs.create(model="tiny", training_file=train_file.id)
    assert e.value.body["param"] == "training_file"
    with pytest.raises(openai.ConflictError):
        a.fine_tuning.jobs.resume(job.id)  # not paused
    assert a.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        a.fine_tuning.jobs.cancel(job.id)
    assert [e.data for e in a.fine_tuning.jobs.list_events(job.id).data if e.type == "status"][0] == {
        "status": "cancelled",
        "previous": "validating_files",
    }


def test_cli_jobs_commands_against_the_server(idle_server, tmp_path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "tunegate.cli.main",
                "jobs",
                *args,
                "--base-url",
                idle_server.base_url,
                "--api-key",
                idle_server.key_a,
            ],
            capture_output=True,
            text=True,
            env={**idle_server.env, "COLUMNS": "200"},
            timeout=120,
        )

    path = tmp_path / "train.jsonl"
    path.write_bytes(GOOD)
    created = cli("create", str(path), "--model", "tiny", "--epochs", "2", "--suffix", "cli")
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.strip().splitlines()[-1]
    c = idle_server.client(idle_server.key_a)
    job = c.fine_tuning.jobs.retrieve(job_id)
    assert job.suffix == "cli" and job.method.supervised.hyperparameters.n_epochs == 2
    assert job_id in cli("list").stdout
    assert json.loads(cli("show", job_id).stdout)["id"] == job_id
    assert cli("cancel", job_id).returncode == 0 and c.fine_tuning.jobs.retrieve(job_id).status == "cancelled"
    again = cli("cancel", job_id)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    assert "Created fine-tuning job" in cli("events", job_id).stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_options_qlora_refused_without_cuda_checkpointing_accepted(idle_server, train_file):
    c = idle_server.client(idle_server.key_a)
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(
            model="tiny", training_file=train_file.id, extra_body={"tunegate": {"quantization": "nf4"}}
        )
    err = e.value.body
    assert e.value.status_code == 400 and err["code"] == "quantization_unavailable"
    assert err["param"] == "tunegate.quantization" and "CUDA GPU" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(
            model="tiny", training_file=train_file.id, extra_body={"tunegate": {"quantization": "int3"}}
        )
    assert "quantization" in str(e.value.body["param"])
    job = c.fine_tuning.jobs.create(
        model="tiny", training_file=train_file.id, extra_body={"tunegate": {"gradient_checkpointing": True}}
    )
    assert job.status == "validating_files"
