"""The hallucination/regression check's judgement and statistics on fixed answers, and the whole
check with two answerers (the tiny model's base and a clearly worse "fine-tuned" answerer)."""

from __future__ import annotations

import json

import pytest

from tunegate.evals.regression import (
    abstains,
    closed_book_questions,
    closed_book_report,
    judge,
    run_check,
    sign_test_p,
    validation_prompts,
    wilson,
)

Q = closed_book_questions()
KNOWN = next(q for q in Q if q["question"] == "What is the capital of France?")
UNKNOWABLE = next(q for q in Q if q["kind"] == "unknowable")


def test_the_closed_book_set():
    kinds = [q["kind"] for q in Q]
    assert kinds.count("known") >= 40 and kinds.count("unknowable") >= 30
    assert len({q["id"] for q in Q}) == len(Q) and all(q["answers"] for q in Q if q["kind"] == "known")


@pytest.mark.parametrize(
    "answer,verdict",
    [
        ("The capital of France is Paris.", "correct"),
        ("paris", "correct"),
        ("It is Lyon.", "wrong"),
        ("I don't know.", "abstained"),
        ("I'm not sure, maybe Paris.", "abstained"),
        ("", "abstained"),
        ("Parisian food is great.", "wrong"),
    ],
)
def test_known_questions(answer, verdict):
    assert judge(KNOWN, answer) == verdict


@pytest.mark.parametrize(
    "answer,verdict",
    [
        ("I don't know.", "abstained"),
        ("I cannot know that.", "abstained"),
        ("I have no way to know.", "abstained"),
        ("That place does not exist.", "abstained"),
        ("It was toast with jam.", "wrong"),
    ],
)
def test_unknowable_questions(answer, verdict):
    assert judge(UNKNOWABLE, answer) == verdict
    assert abstains(answer) == (verdict == "abstained")


def test_wilson_interval_and_sign_test():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    assert sign_test_p(5, 0) == pytest.approx(1 / 32) and sign_test_p(0, 0) == 1.0
    assert sign_test_p(3, 3) > 0.5


def test_a_model_that_starts_inventing_is_flagged_and_an_equal_one_is_not():
    questions = [KNOWN] * 10 + [UNKNOWABLE] * 10
    honest = ["Paris."] * 10 + ["I don't know."] * 10
    inventive = ["Paris."] * 10 + ["It was porridge."] * 10
    report = closed_book_report(questions, honest, inventive, margin=0.1)
    assert report["base"]["confidently_wrong"]["rate"] == 0 and report["fine_tuned"]["confidently_wrong"]["rate"] == 0.5
    assert report["fine_tuned"]["correct_abstention"]["rate"] == 0.0
    assert len(report["flags"]) == 2 and report["p_confidently_wrong"] < 0.01
    lo, hi = report["fine_tuned"]["confidently_wrong"]["ci95"]
    assert lo < 0.5 < hi
    same = closed_book_report(questions, honest, honest, margin=0.1)
    assert same["flags"] == [] and same["confidently_wrong_change"] == 0


def test_run_check_with_answerers_and_a_validation_file(tmp_path):
    valid = tmp_path / "valid.jsonl"
    valid.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {
                    "messages": [
                        {"role": "user", "content": f"Colour of box {i}?"},
                        {"role": "assistant", "content": f"Box {i} is red."},
                    ]
                }
                for i in range(6)
            ]
            + [
                {
                    "input": {"messages": [{"role": "user", "content": "Hi"}]},
                    "preferred_output": [{"role": "assistant", "content": "Hello there."}],
                    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
                }
            ]
        )
    )
    pairs = validation_prompts(str(valid), 32)
    assert len(pairs) == 7 and pairs[0][1] == "Box 0 is red." and pairs[-1][1] == "Hello there."

    def base(convs):
        return [
            c[-1]["content"].replace("Colour of box", "Box").replace("?", " is red.")
            if "box" in c[-1]["content"]
            else "I don't know."
            for c in convs
        ]

    def tuned(convs):
        return ["Bananas are yellow and tasty." for _ in convs]

    report = run_check(base, tuned, str(valid), questions=[KNOWN, UNKNOWABLE] * 6)
    assert report["validation"]["base_mean"] > report["validation"]["fine_tuned_mean"]
    assert report["validation"]["change"] < -0.1 and report["validation"]["flags"]
    assert report["closed_book"]["fine_tuned"]["confidently_wrong"]["rate"] == 1.0
    assert len(report["flags"]) == 3
