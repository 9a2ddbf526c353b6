"""The grader API through the official openai SDK (`client.fine_tuning.alpha.graders`) against a real
server: run and validate, a model grader judged by a model this server serves, OpenAI-shaped 400s,
and judge models of another organisation refused."""

from __future__ import annotations

import openai
import pytest

CHECK = {
    "type": "string_check",
    "name": "fmt",
    "input": "{{sample.output_text}}",
    "reference": "Answer:",
    "operation": "like",
}


def test_run_string_check_and_multi(server):
    client = server.client(server.key_a)
    r = client.fine_tuning.alpha.graders.run(grader=CHECK, model_sample="Answer: Paris")
    assert r.reward == 1.0 and r.metadata.name == "fmt" and r.metadata.type == "string_check"
    assert not r.metadata.errors.invalid_variable_error and r.metadata.execution_time >= 0
    multi = {
        "type": "multi",
        "name": "m",
        "calculate_output": "0.25 * fmt + 0.75 * sim",
        "graders": {
            "fmt": CHECK,
            "sim": {
                "type": "text_similarity",
                "name": "sim",
                "input": "{{sample.output_text}}",
                "reference": "{{item.reference}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
    }
    r = client.fine_tuning.alpha.graders.run(grader=multi, model_sample="Paris", item={"reference": "Paris"})
    assert r.reward == pytest.approx(0.75) and r.sub_rewards == {"fmt": 0.0, "sim": 1.0}


def test_score_model_judged_by_a_served_model(server):
    client = server.client(server.key_a)
    grader = {
        "type": "score_model",
        "name": "judge",
        "model": "tiny",
        "range": [0, 10],
        "input": [{"role": "user", "content": "Rate: {{sample.output_text}}"}],
        "sampling_params": {"max_completions_tokens": 8, "seed": 1},
    }
    r = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="Paris")
    # A tiny random judge says anything: the grade is a number in range, or a parse error, with its tokens counted.
    assert r.model_grader_token_usage_per_model["tiny"] > 0
    assert 0 <= r.reward <= 10
    assert r.metadata.errors.model_grader_parse_error or r.reward == r.metadata.scores["judge"]


def test_validate_and_bad_graders_are_openai_shaped_400s(server):
    client = server.client(server.key_a)
    v = client.fine_tuning.alpha.graders.validate(grader=CHECK)
    assert v.grader.type == "string_check" and v.grader.name == "fmt"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.alpha.graders.validate(
            grader={"type": "python", "name": "p", "source": "def grade(s, i):\n    return 1\n"}
        )
    assert err.value.body["code"] == "python_grader_disabled"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.alpha.graders.run(grader={**CHECK, "operation": "regex"}, model_sample="x")
    assert "operation" in (err.value.body.get("param") or "") + err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.alpha.graders.run(grader={**CHECK, "input": "{{ouput.text}}"}, model_sample="x")
    assert err.value.body["param"] == "grader.input"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.alpha.graders.validate(
            grader={
                "type": "label_model",
                "name": "l",
                "model": "ft:tiny:org-b:x:12345678",
                "labels": ["a"],
                "passing_labels": ["a"],
                "input": [{"role": "user", "content": "x"}],
            }
        )
