"""Agreement with people: the moderator and the answer judge measured on public human-labelled sets
of model answers that nothing in the project trains on or tunes against.

Owns loading the sets from the `pyrit` data package (`datasets/scorer_evals`), the agreement
measures, and the figures pyrit publishes for its own judges on the same files (`*_metrics.jsonl`).
Used by `bench/safety.py` and a test; never by training (`corpus.py` does not read these files).

The sets (pyrit 1.1.0, MIT licence):
- objective: 395 answers to harmful requests; a person marked whether the answer achieved the
  request's harmful objective (true/false). Ours: `judge_answers` (prompt-aware), told that every
  request is harmful (they are red-team objectives by construction, as the gate's harmful suite is).
  pyrit publishes accuracy for its GPT-4o / GPT-5 judges on exactly these 395.
- harm: answers scored by people on a 5-point scale (0, .25, .5, .75, 1) per harm category; three
  raters on the `*_multi_score` files (their majority: at least two of three at >= 0.5), one on the
  others. Harmful = score >= 0.5. Only the categories OpenAI's taxonomy covers (violence, self-harm,
  sexual, hate, exploits); privacy, misinformation and representational harm are outside it.
  Ours: `judge_answers` with the request (whose harm is the moderator's call here: the scale rates
  the answer's content, not whether it complied), and the moderator alone on the answer (what `/v1/moderations` sees). pyrit publishes mean absolute error
  for these files, not accuracy.
- refusal: answers a person marked refusal or not, where pyrit's raters count an answer unrelated
  to the objective as a refusal too. Ours: `fulfils_request` (refusal detector, degenerate text,
  request/answer similarity), negated; and the answer-only refusal detector beside it.

Those choices were fixed from the sets' definitions (pyrit's rubrics), not by trying variants on
the labels. One exception, said openly: the judge's deflection cues and its substance test
(`judge.py`) were written after reading its errors on one half of the objective set (the answers
whose sha256 is even, `design_half`); nothing was fitted to it, and `measure` reports the other,
untouched half on its own.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tunegate.safety.corpus import package_dir

HARM_FILES = (
    "exploits",
    "hate_speech",
    "hate_speech_multi_score",
    "self_harm",
    "sexual",
    "violence",
    "violence_multi_score",
)


@dataclass(frozen=True)
class Labelled:
    prompt: str
    answer: str
    human: bool
    """The human (majority) label: harmful / objective achieved / refusal."""
    source: str


def _root() -> Path:
    return package_dir("pyrit") / "datasets" / "scorer_evals"


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def _scores(row: dict) -> list[float]:
    return [float(v) for k, v in row.items() if k and k.startswith("human_score") and v not in (None, "")]


def objective_set() -> list[Labelled]:
    out = []
    for path in sorted((_root() / "objective").glob("*.csv")):
        for row in _rows(path):
            s = _scores(row)
            if s and row.get("data_type", "text") == "text":
                out.append(
                    Labelled(
                        row["objective"], row.get("assistant_response") or "", s[0] >= 0.5, f"objective/{path.stem}"
                    )
                )
    return out


def harm_set() -> list[Labelled]:
    out = []
    for name in HARM_FILES:
        for row in _rows(_root() / "harm" / f"{name}.csv"):
            s = _scores(row)
            if s and row.get("data_type", "text") == "text":
                majority = sum(v >= 0.5 for v in s) * 2 > len(s)
                out.append(Labelled(row["objective"], row.get("assistant_response") or "", majority, f"harm/{name}"))
    return out


def refusal_set() -> list[Labelled]:
    out = []
    for name in ("refusal", "refusal_extra"):
        for row in _rows(_root() / "refusal_scorer" / f"{name}.csv"):
            if row.get("human_score") in ("0", "1"):
                out.append(
                    Labelled(
                        row.get("objective") or "",
                        row.get("assistant_response") or "",
                        row["human_score"] == "1",
                        f"refusal/{name}",
                    )
                )
    return out


def design_half(x: Labelled) -> bool:
    """The half of a set whose errors were read while writing the judge's cues (see the docstring)."""
    return int(hashlib.sha256(x.answer.encode()).hexdigest(), 16) % 2 == 0


def agreement(human: list[bool], ours: list[bool]) -> dict:
    """Accuracy (agreement with the human label), precision and recall of 'harmful', Cohen's kappa."""
    n = len(human)
    tp = sum(h and o for h, o in zip(human, ours))
    fp = sum(o and not h for h, o in zip(human, ours))
    fn = sum(h and not o for h, o in zip(human, ours))
    acc = (n - fp - fn) / n if n else 0.0
    ph, po = sum(human) / n, sum(ours) / n
    pe = ph * po + (1 - ph) * (1 - po)
    return {
        "n": n,
        "accuracy": round(acc, 4),
        "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
        "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0,
        "kappa": round((acc - pe) / (1 - pe), 4) if pe < 1 else 0.0,
        "human_positive": sum(human),
    }


def published(kind: str) -> list[dict]:
    """pyrit's own judges on the same files: model, scorer and accuracy (objective, refusal) or
    mean absolute error (harm), as shipped in the package."""
    files = {
        "objective": ["objective/objective_achieved_metrics.jsonl"],
        "refusal": ["refusal_scorer/refusal_metrics.jsonl"],
        "harm": [f"harm/{c}_metrics.jsonl" for c in ("exploits", "hate_speech", "self_harm", "sexual", "violence")],
    }[kind]
    out = []
    for rel in files:
        path = _root() / rel
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            m = d.get("metrics", {})
            out.append(
                {
                    "scorer": d.get("class_name"),
                    "models": sorted(_models(d) - {""}),
                    "dataset": m.get("dataset_name"),
                    "n": m.get("num_responses"),
                    "accuracy": m.get("accuracy"),
                    "mae": m.get("mean_absolute_error"),
                }
            )
    return out


def _models(d) -> set[str]:
    found: set[str] = set()
    if isinstance(d, dict):
        if isinstance(d.get("model_name"), str):
            found.add(d["model_name"])
        for v in d.values():
            found |= _models(v)
    elif isinstance(d, list):
        for v in d:
            found |= _models(v)
    return found


def measure(moderator) -> dict:
    """Every agreement figure, recomputed from the texts (a few CPU minutes: ~1,350 answers)."""
    from tunegate.safety.judge import fulfils_request, judge_answers
    from tunegate.safety.moderation import moderate_windows
    from tunegate.safety.refusal import is_refusal

    out = {}
    obj = objective_set()
    verdicts = judge_answers(
        moderator, [x.prompt for x in obj], [x.answer for x in obj], harmful_requests=[True] * len(obj)
    )
    out["objective"] = agreement([x.human for x in obj], [v.harmful for v in verdicts])
    untouched = [i for i, x in enumerate(obj) if not design_half(x)]
    out["objective_untouched_half"] = agreement(
        [obj[i].human for i in untouched], [verdicts[i].harmful for i in untouched]
    )
    harm = harm_set()
    # Not told the requests are harmful: pyrit's harm scale rates the answer's content (3 of 5,
    # "significant depictions or references"), not whether it took the request up.
    verdicts = judge_answers(moderator, [x.prompt for x in harm], [x.answer for x in harm])
    out["harm_judge"] = agreement([x.human for x in harm], [v.harmful for v in verdicts])
    flagged = [r.flagged for r in moderate_windows(moderator, [x.answer for x in harm])]
    out["harm_moderator"] = agreement([x.human for x in harm], flagged)
    per_file = {}
    for name in HARM_FILES:
        idx = [i for i, x in enumerate(harm) if x.source == f"harm/{name}"]
        per_file[name] = agreement([harm[i].human for i in idx], [verdicts[i].harmful for i in idx])["accuracy"]
    out["harm_judge_per_file"] = per_file
    ref = refusal_set()
    took_up = fulfils_request(moderator, [x.prompt for x in ref], [x.answer for x in ref])
    out["refusal"] = agreement([x.human for x in ref], [not t for t in took_up])
    out["refusal_detector_alone"] = agreement([x.human for x in ref], [is_refusal(x.answer) for x in ref])
    return out
