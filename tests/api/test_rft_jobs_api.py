"""Reinforcement fine-tuning through the jobs API with the official openai SDK: a job with a grader
on the tiny model samples, grades, trains, reports reward metrics, checkpoints and a result file,
runs the after-training checks and is served, and its best checkpoint, once gated, becomes the job's
model; bad graders, grader templates naming fields the rows
lack and unsupported hyperparameters are OpenAI-shaped 400s at create."""

from __future__ import annotations

import csv
import io
import json
import time

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.server import wait_for_job

SIMILARITY = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}


def _prompts(n: int, offset: int = 0, field: str = "answer") -> bytes:
    return "".join(
        json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus 1?"}], field: str(i + 1)}) + "\n"
        for i in range(offset, offset + n)
    ).encode()


def _upload(client, data: bytes, name: str):
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def test_reinforcement_job_trains_reports_and_serves(server):
    client = server.client(server.key_a)
    train, valid = _upload(client, _prompts(4), "prompts.jsonl"), _upload(client, _prompts(2, 50), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train.id,
        validation_file=valid.id,
        suffix="rft",
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": SIMILARITY,
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": 2,
                    "learning_rate_multiplier": 5,
                    "compute_multiplier": 0.5,
                    "eval_interval": 1,
                },
            },
        },
    )
    assert job.method.type == "reinforcement"
    assert job.method.reinforcement.grader.type == "text_similarity"
    job = wait_for_job(client, job.id, 900)
    assert job.status == "succeeded", job.error
    hp = job.hyperparameters.model_dump()
    assert hp["batch_size"] == 2 and hp["n_epochs"] == 2 and hp["compute_multiplier"] == 0.5

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = sorted((e.data for e in events if e.type == "metrics"), key=lambda d: d["step"])
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:  # eval_interval 1: the held-out reward after every step
        assert {
            "train_reward_mean",
            "train_reward_std",
            "train_kl",
            "train_grader_error_rate",
            "valid_reward_mean",
        } <= set(m)
        assert 0 <= m["train_reward_mean"] <= 1 and m["train_grader_error_rate"] == 0
    assert metrics[0]["train_kl"] == pytest.approx(0, abs=1e-6)  # the adapter starts at zero
    assert "full_valid_reward_mean" in metrics[1] and "full_valid_reward_mean" not in metrics[0]
    messages = [e.message for e in events]
    assert any(m.startswith("Base model's mean reward on the 2 held-out prompts") for m in messages)
    assert any("mean reward=" in m and "KL=" in m for m in messages)
    assert any(m.startswith("Best checkpoint by validation: step") for m in messages)
    assert any(m.startswith("Regression check:") for m in messages)

    assert sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data) == [2, 4]
    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    assert len(rows) == 4 and float(rows[-1]["train_reward_mean"]) == pytest.approx(
        metrics[-1]["train_reward_mean"], rel=1e-4
    )
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, max_tokens=4, messages=[{"role": "user", "content": "What is 2 plus 1?"}]
    )
    assert answer.choices[0].message.role == "assistant"
    _promote_the_best_checkpoint(client, job, events)


def _promote_the_best_checkpoint(client, job, events):
    """The regression check names the best checkpoint; once it passed the gate on its own it can become
    the job's model (our extension), never before."""
    best = next(e.data for e in events if (e.data or {}).get("check") == "best_checkpoint")
    ck = next(c for c in client.fine_tuning.jobs.checkpoints.list(job.id).data if c.step_number == best["step"])
    promote = f"/fine_tuning/jobs/{job.id}/checkpoints/{ck.id}/promote"
    with pytest.raises(openai.ConflictError) as err:
        client.post(promote, cast_to=FineTuningJob)
    assert err.value.body["code"] == "checkpoint_not_gated" and f"checkpoints/{ck.id}/gate" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.post(f"/fine_tuning/jobs/{job.id}/checkpoints/ftckpt-nope/promote", cast_to=FineTuningJob)
    gate = f"/fine_tuning/jobs/{job.id}/checkpoints/{ck.id}/gate"
    client.post(gate, cast_to=object)
    deadline = time.time() + 600
    while (status := client.get(gate, cast_to=object)["status"]) == "running" and time.time() < deadline:
        time.sleep(2)
    assert status == "passed"
    promoted = client.post(promote, cast_to=FineTuningJob)
    assert promoted.fine_tuned_model == ck.fine_tuned_model_checkpoint == best["model"]
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == ck.fine_tuned_model_checkpoint
    answer = client.chat.completions.create(
        model=promoted.fine_tuned_model, max_tokens=4, messages=[{"role": "user", "content": "What is 2 plus 1?"}]
    )
    assert answer.model == ck.fine_tuned_model_checkpoint


def _rft(client, training_file, grader=SIMILARITY, **hp):
    method = {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hp}}
    return client.fine_tuning.jobs.create(model="tiny", training_file=training_file, method=method)


@pytest.mark.parametrize(
    ("grader", "hp", "param", "code"),
    [
        (
            {**SIMILARITY, "evaluation_metric": "wer"},
            {},
            "method.reinforcement.grader.text_similarity.evaluation_metric",
            "invalid_grader",
        ),
        (
            {"type": "string_check", "name": "x", "input": "{{sample.output_text}}", "reference": "4"},
            {},
            "method.reinforcement.grader.string_check.operation",
            "invalid_grader",
        ),
        ({**SIMILARITY, "reference": "{{item.solution}}"}, {}, "method.reinforcement.grader", "unknown_template_field"),
        ({**SIMILARITY, "reference": "{{answer}}"}, {}, "method.reinforcement.grader.reference", "invalid_grader"),
        (
            {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"},
            {},
            "method.reinforcement.grader.type",
            "python_grader_disabled",
        ),
        (
            {
                "type": "score_model",
                "name": "judge",
                "model": "tiny",
                "input": [{"role": "user", "content": "{{sample.output_text}}"}],
            },
            {},
            "method.reinforcement.grader.type",
            "unsupported_grader",
        ),
        (
            SIMILARITY,
            {"reasoning_effort": "high"},
            "method.reinforcement.hyperparameters.reasoning_effort",
            "unsupported_parameter",
        ),
        (SIMILARITY, {"eval_samples": 0}, "method.reinforcement.hyperparameters.eval_samples", None),
        (SIMILARITY, {"compute_multiplier": 100}, "method.reinforcement.hyperparameters.compute_multiplier", None),
    ],
)
def test_bad_reinforcement_requests_are_400s(server, grader, hp, param, code):
    client = server.client(server.key_a)
    prompts = _upload(client, _prompts(6), "prompts.jsonl")
    with pytest.raises(openai.BadRequestError) as err:
        _rft(client, prompts.id, grader, **hp)
    body = err.value.body
    assert body["param"] == param, body
    if code:
        assert body["code"] == code, body
    assert body["message"] and body["type"] == "invalid_request_error"


def test_unknown_template_field_names_the_lines(server):
    client = server.client(server.key_a)
    mixed = _upload(client, _prompts(3) + _prompts(2, 10, field="result"), "mixed.jsonl")
    with pytest.raises(openai.BadRequestError) as err:
        _rft(client, mixed.id)
    message = err.value.body["message"]
    assert "`{{item.answer}}`" in message and "line 4 of the training file" in message and "line 5" in message
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny", training_file=mixed.id, method={"type": "reinforcement"})
    assert err.value.body["param"] == "method.reinforcement.grader"


def test_reinforcement_needs_prompt_rows(server):
    client = server.client(server.key_a)
    chat = _upload(
        client,
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                    "answer": "x",
                }
            )
            + "\n"
            for _ in range(4)
        ).encode(),
        "chat.jsonl",
    )
    job = wait_for_job(client, _rft(client, chat.id).id, 300)
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert "ending with a user turn" in job.error.message


def test_preference_and_reinforcement_jobs_from_an_unknown_parent_are_refused(server):
    client = server.client(server.key_a)
    prompts = _upload(client, _prompts(6), "prompts.jsonl")
    for method in (
        {"type": "reinforcement", "reinforcement": {"grader": SIMILARITY}},
        {"type": "dpo"},
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model="ft:tiny:org:x:ftjob-1", training_file=prompts.id, method=method)
        assert err.value.body["param"] == "model" and err.value.body["code"] == "model_not_available"
