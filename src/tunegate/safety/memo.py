"""Remembered verdicts, so that the gate does not judge again what was judged before.

Owns two memos, both exact (a hit returns what judging again would return) and both keyed on what a
verdict depends on:

- `MemoModerator`: a moderator that remembers its results per text. Screening moderates every text
  of a training file and saves its memo in the job folder; the gate's reading of the training file
  (`evidence.py`) loads it and moderates only what screening did not see (the refusal examples mixed
  in after it), instead of the whole file a second time. The memo file is stamped with the
  moderator's identity and ignored under another one.
- `JudgementMemo`: the gate's verdicts on (request, answer, request categories) pairs, one file per
  pair in a folder named by the moderator's identity and a digest of the judging code. The base
  model's answers to the gate's suites come from a cache shared by every job on that model
  (`generation.py`), so their verdicts are the same for every job: judged once (at set-up, by
  `evals/prepare.py`), then read; so are the suite prompts' own moderation results.

A moderator's identity (`moderator_identity`) is what its results depend on: the built classifier's
build key, or an `http` endpoint's URL and model. A moderator without one (a plug-in that does not
set `identity`) is never remembered. Does not own moderating or judging themselves
(`moderation.py`, `judge.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from tunegate.safety.moderation import Moderator
from tunegate.safety.schemas import CATEGORIES, ModerationResult

T = TypeVar("T")
MODERATION_MEMO = "moderation_memo.json"  # in the job folder, written by screening
MAX_ENTRIES = 50_000  # texts a saved memo keeps (~200 bytes each); beyond, the rest is judged again


def moderator_identity(moderator: Moderator) -> str | None:
    """What the moderator's results depend on, or None when it does not say (nothing is remembered)."""
    identity = getattr(moderator, "identity", None)
    return str(identity) if identity else None


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _encode(r: ModerationResult) -> Any:
    """Flagged categories and scores in CATEGORIES order (a tenth of the full JSON), when that is exact."""
    compact = [r.flagged_categories(), [r.scores()[c] for c in CATEGORIES]]
    return compact if _decode(compact) == r else r.model_dump(mode="json")


def _decode(value: Any) -> ModerationResult:
    if isinstance(value, dict):
        return ModerationResult.model_validate(value)
    flags, scores = value
    return ModerationResult.model_validate(
        {
            "flagged": bool(flags),
            "categories": {c: c in flags for c in CATEGORIES},
            "category_scores": dict(zip(CATEGORIES, scores)),
            "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
        }
    )


class MemoModerator:
    """`inner` with a memory of its results per text (see module docstring). Other attributes (the
    built classifier's thresholds and encoder, which screening and the judge read) are `inner`'s."""

    def __init__(self, inner: Moderator, known: dict[str, Any] | None = None):
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.identity = moderator_identity(inner)
        self._known: dict[str, Any] = dict(known or {})
        self._given = frozenset(self._known)  # what the caller handed over (screening's results)
        self.hits = 0  # texts answered from what was known before the call that asked
        self.given_hits = 0  # of them, answered from what the caller handed over
        self.misses = 0  # distinct texts the inner moderator judged

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def moderate(self, texts: list[str]) -> list[ModerationResult]:
        if not self.identity:  # nothing may be remembered of it
            return self.inner.moderate(texts)
        keys = [_text_key(t) for t in texts]
        found: dict[str, ModerationResult] = {}
        for k in set(keys) & self._known.keys():
            try:
                found[k] = _decode(self._known[k])
            except (TypeError, ValueError, KeyError):  # a damaged entry: judged again
                del self._known[k]
        todo = {k: t for k, t in zip(keys, texts) if k not in found}
        self.hits += sum(k in found for k in keys)  # known before this call (a repeat within it is not)
        self.given_hits += sum(k in found and k in self._given for k in keys)
        self.misses += len(todo)
        if todo:
            fresh = self.inner.moderate(list(todo.values()))
            if len(fresh) != len(todo):
                raise ValueError(f"the moderator returned {len(fresh)} results for {len(todo)} texts")
            for k, r in zip(todo, fresh):
                found[k] = r
                self._known[k] = _encode(r)
        return [found[k] for k in keys]

    def save(self, path: Path) -> None:
        """Write the memo (at most MAX_ENTRIES texts) atomically; nothing when the moderator has no identity."""
        if not self.identity:
            return
        entries = dict(list(self._known.items())[:MAX_ENTRIES])
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "results": entries}), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, inner: Moderator) -> MemoModerator:
        """`inner` with the memo saved at `path` when there is one of the same moderator; else empty."""
        identity = moderator_identity(inner)
        known = None
        if identity and path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                saved = None  # damaged: judged again, never trusted
            if isinstance(saved, dict) and saved.get("identity") == identity and isinstance(saved.get("results"), dict):
                known = saved["results"]
        return cls(inner, known)


@lru_cache(maxsize=1)
def judging_code_digest() -> str:
    """The code a verdict comes from: the judge, refusal and degenerate-text rules, the windows."""
    from tunegate.safety.corpus import encoder_dir

    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("judge.py", "refusal.py", "text.py", "moderation.py", "schemas.py"):
        h.update((here / name).read_bytes())
    h.update((encoder_dir() / "config.json").read_bytes())  # the similarity encoder (on-topic)
    return h.hexdigest()[:16]


class JudgementMemo:
    """Verdicts on (request, answer, request categories) pairs on disk (see module docstring).
    `judge` takes lists and returns one verdict per pair, judging only the pairs not on disk."""

    def __init__(self, folder: Path, moderator: Moderator):
        identity = moderator_identity(moderator)
        self.folder = (
            folder / hashlib.sha256(f"{identity}|{judging_code_digest()}".encode()).hexdigest()[:24]
            if identity
            else None
        )
        self.hits = 0
        self._moderator = moderator

    def requests(self) -> MemoModerator:
        """The moderator with the suite prompts' results kept in this folder (they are the same for every
        job as well); `keep` saves what it learned."""
        if self.folder is None:
            return MemoModerator(self._moderator)
        return MemoModerator.load(self.folder / "requests.json", self._moderator)

    def keep(self, requests: MemoModerator) -> None:
        if self.folder is not None and requests.misses:
            self.folder.mkdir(parents=True, exist_ok=True)
            requests.save(self.folder / "requests.json")

    def _path(self, request: str, answer: str, categories: list[str]) -> Path:
        assert self.folder is not None
        key = hashlib.sha256(json.dumps([request, answer, sorted(categories)]).encode()).hexdigest()[:32]
        return self.folder / f"{key}.json"

    def judge(
        self,
        requests: list[str],
        answers: list[str],
        categories: list[list[str]],
        judge: Callable[[list[str], list[str], list[list[str]]], list[dict]],
        parse: Callable[[Any], T],
    ) -> list[T]:
        """`parse` turns a verdict dict into what the caller uses; a kept verdict it rejects is judged again."""
        if self.folder is None:
            return [parse(v) for v in judge(requests, answers, categories)]
        paths = [self._path(r, a, c) for r, a, c in zip(requests, answers, categories)]
        known: dict[int, T] = {}
        for i, p in enumerate(paths):
            try:
                known[i] = parse(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, TypeError, ValueError):
                pass  # not judged yet, or damaged: judged now
        todo = [i for i in range(len(paths)) if i not in known]
        self.hits = len(known)
        if todo:
            fresh = judge([requests[i] for i in todo], [answers[i] for i in todo], [categories[i] for i in todo])
            self.folder.mkdir(parents=True, exist_ok=True)
            for i, verdict in zip(todo, fresh):
                tmp = paths[i].with_suffix(f".{os.getpid()}.tmp")  # a concurrent gate never reads half a file
                tmp.write_text(json.dumps(verdict), encoding="utf-8")
                tmp.replace(paths[i])
                known[i] = parse(verdict)
        return [known[i] for i in range(len(paths))]
