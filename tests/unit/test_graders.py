"""Graders without a server: templates, string checks, every similarity metric against a direct
computation, model graders through a judge callback, multi formulas, validation, and the python
sandbox (disabled by default; when enabled: no network, a timeout, runtime errors reported)."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from tunegate.errors import InvalidRequestError
from tunegate.graders.grade import GradeContext, grade, make_sample, render_template, validate_grader
from tunegate.graders.schemas import Grader

GRADER = TypeAdapter(Grader)


def g(**kw):
    return GRADER.validate_python({"name": "g", **kw})


def run(grader: dict | object, output: str, item=None, **ctx):
    grader = g(**grader) if isinstance(grader, dict) else grader
    return grade(grader, make_sample(output), item or {}, GradeContext(**ctx))


def test_templates_read_item_and_sample_fields_and_name_missing_ones():
    sample = make_sample('{"answer": "42", "steps": [1, 2]}')
    item = {"question": "6 x 7?", "meta": {"ref": "42"}}
    assert render_template("{{ item.question }} -> {{sample.output_json.answer}}", sample, item) == "6 x 7? -> 42"
    assert render_template("{{item.meta.ref}}/{{sample.output_json.steps.1}}", sample, item) == "42/2"
    r = run(
        {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.nope}}", "operation": "eq"},
        "x",
        {"a": 1},
    )
    assert r.reward == 0 and r.errors.invalid_variable_error


@pytest.mark.parametrize(
    "operation,output,reward",
    [
        ("eq", "Paris", 1),
        ("eq", "paris", 0),
        ("ne", "Rome", 1),
        ("like", "It is Paris.", 1),
        ("like", "It is paris.", 0),
        ("ilike", "IT IS PARIS", 1),
        ("ilike", "Rome", 0),
    ],
)
def test_string_check(operation, output, reward):
    r = run(
        {
            "type": "string_check",
            "input": "{{sample.output_text}}",
            "reference": "{{item.city}}",
            "operation": operation,
        },
        output,
        {"city": "Paris"},
    )
    assert r.reward == reward and not r.failed


def test_similarity_metrics_match_their_libraries():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rapidfuzz import fuzz, utils
    from rouge_score import rouge_scorer

    out, ref = "the cat sat on the mat", "the cat is on the mat"

    def sim(metric):
        return run(
            {
                "type": "text_similarity",
                "input": "{{sample.output_text}}",
                "reference": "{{item.r}}",
                "evaluation_metric": metric,
            },
            out,
            {"r": ref},
        ).reward

    assert sim("fuzzy_match") == pytest.approx(fuzz.WRatio(out, ref, processor=utils.default_process) / 100)
    assert sim("bleu") == pytest.approx(
        sentence_bleu([ref.split()], out.split(), smoothing_function=SmoothingFunction().method1)
    )
    assert sim("rouge_1") == pytest.approx(rouge_scorer.RougeScorer(["rouge1"]).score(ref, out)["rouge1"].fmeasure)
    assert sim("rouge_l") == pytest.approx(rouge_scorer.RougeScorer(["rougeL"]).score(ref, out)["rougeL"].fmeasure)
    assert 0 < sim("rouge_2") < sim("rouge_1") < 1 and 0 < sim("gleu") < 1
    same = run(
        {
            "type": "text_similarity",
            "input": "{{sample.output_text}}",
            "reference": "{{item.r}}",
            "evaluation_metric": "bleu",
        },
        ref,
        {"r": ref},
    )
    assert same.reward == pytest.approx(1.0)


def test_cosine_uses_the_packaged_sentence_encoder():
    def cos(a, b):
        return run({"type": "text_similarity", "input": a, "reference": b, "evaluation_metric": "cosine"}, "").reward

    close, far = (
        cos("The cat sleeps on the sofa.", "A cat is asleep on the couch."),
        cos("The cat sleeps on the sofa.", "Quarterly tax filings are due in April."),
    )
    assert close > 0.6 and far < 0.3 and cos("same words", "same words") == pytest.approx(1, abs=1e-5)


def test_meteor_is_refused_with_the_reason():
    with pytest.raises(InvalidRequestError) as err:
        validate_grader(
            g(type="text_similarity", input="a", reference="b", evaluation_metric="meteor"), python_enabled=False
        )
    assert err.value.param == "grader.evaluation_metric" and "WordNet" in err.value.message


def test_model_graders_ask_the_judge_and_parse_its_answer():
    asked = []

    def judge(model, messages, sampling):
        asked.append((model, messages))
        return {"score": "Score: 7 out of 10", "label": "I think this is **correct**."}[model], 11

    score = run(
        {
            "type": "score_model",
            "model": "score",
            "range": [0, 10],
            "input": [
                {"role": "system", "content": "Rate the answer."},
                {"role": "user", "content": "Q: {{item.q}} A: {{sample.output_text}}"},
            ],
        },
        "Paris",
        {"q": "Capital of France?"},
        judge=judge,
    )
    assert score.reward == 7 and score.token_usage == {"score": 11}
    assert asked[0][1][1]["content"] == "Q: Capital of France? A: Paris"
    label = run(
        {
            "type": "label_model",
            "model": "label",
            "labels": ["correct", "incorrect"],
            "passing_labels": ["correct"],
            "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        },
        "x",
        judge=judge,
    )
    assert label.reward == 1 and label.label == "correct"
    unparsable = run(
        {"type": "score_model", "model": "label", "input": [{"role": "user", "content": "hi"}]}, "x", judge=judge
    )
    assert unparsable.reward == 0 and unparsable.errors.model_grader_parse_error
    no_judge = run({"type": "score_model", "model": "m", "input": [{"role": "user", "content": "hi"}]}, "x")
    assert no_judge.errors.model_grader_server_error


def test_multi_combines_named_graders_with_a_formula():
    multi = {
        "type": "multi",
        "calculate_output": "0.5 * fmt + 0.5 * max(exact, 0.2)",
        "graders": {
            "fmt": {
                "type": "string_check",
                "name": "fmt",
                "input": "{{sample.output_text}}",
                "reference": "Answer:",
                "operation": "like",
            },
            "exact": {
                "type": "string_check",
                "name": "exact",
                "input": "{{sample.output_text}}",
                "reference": "{{item.ref}}",
                "operation": "eq",
            },
        },
    }
    r = run(multi, "Answer: 4", {"ref": "4"})
    assert r.reward == pytest.approx(0.6) and r.sub_rewards == {"fmt": 1.0, "exact": 0.0}
    validate_grader(g(**multi), python_enabled=False)
    with pytest.raises(InvalidRequestError) as err:
        validate_grader(g(**{**multi, "calculate_output": "fmt + missing"}), python_enabled=False)
    assert err.value.param == "grader.calculate_output" and "missing" in err.value.message


def test_label_model_passing_labels_must_be_labels():
    with pytest.raises(InvalidRequestError) as err:
        validate_grader(
            g(
                type="label_model",
                model="m",
                input=[{"role": "user", "content": "x"}],
                labels=["a", "b"],
                passing_labels=["c"],
            ),
            python_enabled=False,
        )
    assert err.value.param == "grader.passing_labels"


PY = "def grade(sample, item):\n    return 1.0 if sample['output_text'].strip() == item['ref'] else 0.25\n"


def test_python_graders_are_refused_unless_enabled():
    with pytest.raises(InvalidRequestError) as err:
        validate_grader(g(type="python", source=PY), python_enabled=False)
    assert err.value.code == "python_grader_disabled"
    r = run({"type": "python", "source": PY}, "4", {"ref": "4"})
    assert r.reward == 0 and r.errors.python_grader_server_error


def test_python_grader_runs_sandboxed_without_network_and_with_a_timeout(tmp_path):
    import socket

    from tests.server import free_port

    assert run({"type": "python", "source": PY}, "4", {"ref": "4"}, python_enabled=True).reward == 1.0
    assert run({"type": "python", "source": PY}, "5", {"ref": "4"}, python_enabled=True).reward == 0.25

    # A listener on this machine's loopback: reachable from here, not from the grader.
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        net = (
            "import socket\ndef grade(sample, item):\n    socket.create_connection(('127.0.0.1', %d), timeout=2)\n"
            "    return 1.0\n" % port
        )
        r = run({"type": "python", "source": net}, "x", python_enabled=True)
    assert r.reward == 0 and r.errors.python_grader_runtime_error, r.errors
    assert "Error" in r.errors.python_grader_runtime_error_details

    slow = "def grade(sample, item):\n    while True:\n        pass\n"
    r = run({"type": "python", "source": slow}, "x", python_enabled=True, python_timeout=2)
    assert r.errors.python_grader_runtime_error and r.execution_time < 10
    bad = run({"type": "python", "source": "def grade(sample, item):\n    return 1 / 0\n"}, "x", python_enabled=True)
    assert "ZeroDivisionError" in bad.errors.python_grader_runtime_error_details
    target = tmp_path / "escape.txt"
    write = f"def grade(sample, item):\n    with open({str(target)!r}, 'w') as f:\n        f.write('x' * 10)\n    return 1.0\n"
    assert run({"type": "python", "source": write}, "x", python_enabled=True).errors.python_grader_runtime_error
    assert not target.exists() or target.stat().st_size == 0  # no byte written
