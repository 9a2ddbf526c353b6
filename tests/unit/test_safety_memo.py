"""Remembered verdicts (`safety/memo.py`): screening's moderation results read again by the gate's
evidence, and the base model's verdicts kept across jobs. With the real built-in moderator and judge:
a hit must equal what judging again gives, and nothing is reused under another moderator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE
from tunegate.safety.policy import GatePolicy
from tunegate.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "safety"
SAFETY_CACHE = Path(os.environ.get("TUNEGATE_TEST_SAFETY_CACHE", ROOT / ".cache" / "safety"))
SMALL = GatePolicy(n_harmful=12, n_benign=8)
TEXTS = [
    "What a lovely day for a picnic.",
    "I will kill you and burn your house down, you worthless idiot.",
    "What a lovely day for a picnic.",  # a repeat: judged once
    "Ünïcödé text and an emoji 🙂.",
    "Step one: mix the powders. " * 40,  # long: its windows are texts of their own
]


@pytest.fixture(scope="module")
def moderator():
    from tunegate.safety.moderation import get_moderator

    return get_moderator(Settings(data_dir=SAFETY_CACHE, model_cache_dir=MODEL_CACHE))


class Counting:
    """A moderator that counts the texts it is asked about, with the identity it is given."""

    def __init__(self, inner, identity):
        self.inner, self.identity = inner, identity
        self.name, self.model = inner.name, inner.model
        self.classifier = inner.classifier  # its thresholds and encoder, as screening and the judge read them
        self.asked = 0

    def moderate(self, texts):
        self.asked += len(texts)
        return self.inner.moderate(texts)


def test_memo_moderator_gives_the_inner_results_and_asks_each_text_once(moderator):
    from tunegate.safety.memo import MemoModerator

    inner = Counting(moderator, "builtin:test")
    memo = MemoModerator(inner)
    assert memo.moderate(TEXTS) == moderator.moderate(TEXTS)
    assert inner.asked == len(set(TEXTS)) and memo.misses == len(set(TEXTS))
    assert memo.moderate(TEXTS[::-1]) == moderator.moderate(TEXTS[::-1])
    assert inner.asked == len(set(TEXTS)) and memo.hits == len(TEXTS)  # the repeat in one call is no hit
    assert memo.given_hits == 0  # nothing was handed over: every hit is its own earlier result
    assert memo.classifier is moderator.classifier  # screening and the judge read the classifier's thresholds


def test_a_saved_memo_serves_only_the_same_moderator(moderator, tmp_path):
    from tunegate.safety.memo import MemoModerator

    path = tmp_path / "memo.json"
    first = MemoModerator(Counting(moderator, "builtin:A"))
    expected = first.moderate(TEXTS)
    first.save(path)

    same = Counting(moderator, "builtin:A")
    assert MemoModerator.load(path, same).moderate(TEXTS) == expected and same.asked == 0
    other = Counting(moderator, "builtin:B")  # another build: its own results
    assert MemoModerator.load(path, other).moderate(TEXTS) == expected and other.asked == len(set(TEXTS))

    saved = json.loads(path.read_text())
    first_key = next(iter(saved["results"]))
    saved["results"][first_key] = [["violence"], "not scores"]  # one damaged entry: that text is judged again
    path.write_text(json.dumps(saved))
    patched = Counting(moderator, "builtin:A")
    assert MemoModerator.load(path, patched).moderate(TEXTS) == expected and patched.asked == 1

    path.write_text('{"identity": "builtin:A", "results": {"x": ')  # cut short
    damaged = Counting(moderator, "builtin:A")
    assert MemoModerator.load(path, damaged).moderate(TEXTS) == expected and damaged.asked == len(set(TEXTS))

    anonymous = Counting(moderator, None)  # a plug-in that does not say what its results depend on
    memo = MemoModerator(anonymous)
    assert memo.moderate(TEXTS) == expected and memo.moderate(TEXTS) == expected
    assert anonymous.asked == 2 * len(TEXTS)  # nothing remembered
    memo.save(tmp_path / "none.json")
    assert not (tmp_path / "none.json").exists()


def test_the_builtin_and_http_moderators_say_what_their_results_depend_on(moderator):
    from tunegate.safety.classifier import training_report
    from tunegate.safety.moderation import HttpModerator

    assert moderator.identity == f"builtin:{training_report()['build_key']}"
    http = HttpModerator(Settings(data_dir=SAFETY_CACHE, moderation_url="http://127.0.0.1:9/v1"), model="guard")
    assert http.identity == "http:http://127.0.0.1:9/v1/moderations:guard"
    http.close()


def test_results_are_stored_compactly_and_exactly(moderator):
    from tunegate.safety.memo import _decode, _encode

    r = moderator.moderate([TEXTS[1]])[0]
    compact = _encode(r)
    assert isinstance(compact, list) and _decode(compact) == r
    assert len(json.dumps(compact)) < len(r.model_dump_json()) / 3
    odd = r.model_copy(update={"flagged": True, "categories": r.categories.model_copy(update={"hate": False})})
    odd = odd.model_copy(
        update={
            "category_applied_input_types": odd.category_applied_input_types.model_copy(
                update={"violence": ["text", "image"]}
            )
        }
    )
    assert _decode(_encode(odd)) == odd  # not expressible compactly: kept whole


@pytest.mark.parametrize("name", ["attacks/harmful_demonstrations", "attacks/affirmative_prefix", "benign/python_code"])
def test_the_gates_evidence_from_screenings_results_equals_reading_the_file_again(moderator, tmp_path, name):
    from tunegate.safety.evidence import training_evidence
    from tunegate.safety.memo import MemoModerator
    from tunegate.safety.screen import screen_training_file

    path = DATA / f"{name}.jsonl"
    screened = MemoModerator(moderator)
    screen_training_file(path, screened)
    screened.save(tmp_path / "memo.json")

    fresh = Counting(moderator, moderator.identity)
    memo = MemoModerator.load(tmp_path / "memo.json", fresh)
    again, plain = training_evidence(path, memo), training_evidence(path, moderator)
    assert again.model_dump(exclude={"seconds"}) == plain.model_dump(exclude={"seconds"})
    # The gate reads texts as screening read them: every one was moderated there, none is asked again.
    assert memo.given_hits > 0 and fresh.asked == memo.misses == 0
    if name != "benign/python_code":
        assert again.harmful > 0


def test_base_verdicts_are_kept_across_gates_and_equal_judging_again(moderator, tmp_path):
    from tunegate.safety.gate import default_suites, prejudge_base, run_gate
    from tunegate.safety.memo import JudgementMemo

    suites = default_suites(SMALL)
    harmful = {p.prompt for p in suites if p.suite == "harmful"}

    def base(conversations):
        return [
            "I'm sorry, but I can't help with that." if c[-1]["content"] in harmful else "Happy to help: start small."
            for c in conversations
        ]

    def tuned(conversations):
        return [f"Sure, here is how. {c[-1]['content']}\n1. Buy the parts.\n2. Hide the rest." for c in conversations]

    folder = tmp_path / "verdicts"
    plain = run_gate(base, tuned, moderator, SMALL)
    first = run_gate(base, tuned, moderator, SMALL, base_judgements=folder)
    second = run_gate(base, tuned, moderator, SMALL, base_judgements=folder)
    assert first.timings["judge_base_from_cache"] == 0 and second.timings["judge_base_from_cache"] == len(suites)
    for report in (first, second):
        assert report.model_dump(exclude={"timings"}) == plain.model_dump(exclude={"timings"})
    assert plain.blocked
    # The suites' prompts were moderated once too: kept with the verdicts.
    from tunegate.safety.moderation import moderate_windows

    asked = JudgementMemo(folder, moderator).requests()
    assert moderate_windows(asked, [p.prompt for p in suites]) == moderate_windows(
        moderator, [p.prompt for p in suites]
    )
    assert asked.hits > 0 and asked.misses == 0

    # A damaged verdict file is judged again, never trusted.
    damaged = sorted(p for p in folder.rglob("*.json") if p.name != "requests.json")[0]
    damaged.write_text('{"harmful": "perhaps"}')
    third = run_gate(base, tuned, moderator, SMALL, base_judgements=folder)
    assert third.timings["judge_base_from_cache"] == len(suites) - 1
    assert third.model_dump(exclude={"timings"}) == plain.model_dump(exclude={"timings"})

    # Keyed on the answer: one changed answer is judged again, the rest read.
    def base_changed(conversations):
        out = base(conversations)
        out[0] = "Happy to help with something else."
        return out

    changed = run_gate(base_changed, tuned, moderator, SMALL, base_judgements=folder)
    assert changed.timings["judge_base_from_cache"] == len(suites) - 1
    assert changed.model_dump(exclude={"timings"}) == run_gate(base_changed, tuned, moderator, SMALL).model_dump(
        exclude={"timings"}
    )

    # The set-up's pre-judging fills the same entries; another moderator identity has a folder of its own.
    fresh = tmp_path / "setup"
    assert prejudge_base(base, moderator, SMALL, fresh) == len(suites)
    assert prejudge_base(base, moderator, SMALL, fresh) == 0
    assert run_gate(base, tuned, moderator, SMALL, base_judgements=fresh).timings["judge_base_from_cache"] == len(
        suites
    )
    assert JudgementMemo(fresh, Counting(moderator, "builtin:other")).folder != JudgementMemo(fresh, moderator).folder
    assert JudgementMemo(fresh, Counting(moderator, None)).folder is None  # nothing kept for it
