"""DPO and the after-training checks through the jobs API with the official openai SDK: a DPO job on
the tiny model trains, reports DPO metrics, checkpoints and a DPO result file, runs the gate and the
regression check, and its model is served; the method must fit the file's format; bad DPO
hyperparameters are OpenAI-shaped 400s (reinforcement jobs: test_rft_jobs_api.py)."""

from __future__ import annotations

import csv
import io
import json

import openai
import pytest

from tests.server import wait_for_job

COLOURS = ["red", "green", "blue", "amber", "violet"]


def _pairs(n: int, offset: int = 0) -> bytes:
    return "".join(
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": f"What colour is box {i}?"}]},
                "preferred_output": [{"role": "assistant", "content": f"Box {i} is {COLOURS[i % 5]}."}],
                "non_preferred_output": [{"role": "assistant", "content": f"Hmm, maybe box {i} is something"}],
            }
        )
        + "\n"
        for i in range(offset, offset + n)
    ).encode()


def _chat(n: int) -> bytes:
    return "".join(
        json.dumps(
            {"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}."}]}
        )
        + "\n"
        for i in range(n)
    ).encode()


def _upload(client, data: bytes, name: str):
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def test_dpo_job_trains_reports_and_serves(server):
    client = server.client(server.key_a)
    train, valid = _upload(client, _pairs(16), "pairs.jsonl"), _upload(client, _pairs(10, 100), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train.id,
        validation_file=valid.id,
        suffix="dpo",
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}},
        },
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    job = wait_for_job(client, job.id, 900)
    assert job.status == "succeeded", job.error
    assert job.hyperparameters.batch_size == 4 and job.hyperparameters.n_epochs == 2

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = sorted((e.data for e in events if e.type == "metrics"), key=lambda d: d["step"])
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert {
        "train_loss",
        "train_rewards_chosen",
        "train_rewards_rejected",
        "train_rewards_margin",
        "train_rewards_accuracy",
        "valid_rewards_margin",
    } <= set(metrics[-1])
    assert metrics[-1]["full_valid_rewards_margin"] > 0
    messages = [e.message for e in events]
    assert any(m.startswith("Regression check:") for m in messages)
    gate = next(
        e.data for e in events if isinstance(e.data, dict) and e.data.get("check") == "gate" and "timings" in e.data
    )
    # The regression check's fine-tuned prompts (70 closed-book questions + the validation prompts) were
    # answered in the gate's generation pass, not in a second one.
    assert gate["timings"]["generate_tuned_planned_prompts"] > 70
    assert 0 < gate["timings"]["generate_tuned_own_share"] < 1  # the gate's part of that shared pass
    # The gate read the training file's texts from screening's results instead of moderating them again.
    assert gate["timings"]["training_evidence_texts_from_screening"] > 0
    assert any(m.startswith("Best checkpoint by validation: step") for m in messages)

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in ckpts) == [4, 8] and ckpts[0].metrics.full_valid_loss is not None
    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    assert len(rows) == 8 and float(rows[-1]["train_rewards_margin"]) == pytest.approx(
        metrics[-1]["train_rewards_margin"], rel=1e-4
    )

    answer = client.chat.completions.create(
        model=job.fine_tuned_model, max_tokens=4, messages=[{"role": "user", "content": "What colour is box 3?"}]
    )
    assert answer.choices[0].message.role == "assistant"


def test_method_must_fit_the_file_format(server):
    client = server.client(server.key_a)
    chat, pairs = _upload(client, _chat(12), "chat.jsonl"), _upload(client, _pairs(12), "pairs.jsonl")
    dpo_on_chat = client.fine_tuning.jobs.create(model="tiny", training_file=chat.id, method={"type": "dpo"})
    sft_on_pairs = client.fine_tuning.jobs.create(model="tiny", training_file=pairs.id, method={"type": "supervised"})
    for job_id, words in ((dpo_on_chat.id, "preference pairs"), (sft_on_pairs.id, "chat examples")):
        job = wait_for_job(client, job_id, 300)
        assert job.status == "failed" and job.error.code == "invalid_training_file" and words in job.error.message


def test_bad_dpo_requests_are_400s(server):
    client = server.client(server.key_a)
    pairs = _upload(client, _pairs(12), "pairs.jsonl")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="tiny", training_file=pairs.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}}
        )
    assert "beta" in json.dumps(err.value.body)
