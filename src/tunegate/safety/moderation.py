"""The moderator registry: named moderators that turn texts into OpenAI moderation results.

Owns the `Moderator` interface, the registry (`register_moderator`, `get_moderator`), the two
built-ins (`builtin`: the packaged classifier; `http`: any OpenAI-compatible `/v1/moderations`
endpoint such as a Llama Guard server), and building a `ModerationCreateResponse`. The built-ins
register themselves exactly as a plug-in would. Does not own the HTTP route (`router.py`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from tunegate.errors import InvalidRequestError, ServerError
from tunegate.ids import new_id
from tunegate.plugins import MODERATORS
from tunegate.safety.schemas import CATEGORIES, DEFAULT_MODEL, MAX_INPUTS, ModerationCreateResponse, ModerationResult
from tunegate.settings import Settings
from tunegate.threads import run_sized


@runtime_checkable
class Moderator(Protocol):
    name: str
    model: str
    """The model name reported in responses."""

    def moderate(self, texts: list[str]) -> list[ModerationResult]:
        """One result per text, in order."""


# A moderator may also set `identity`: a string that changes whenever its results may (the built-ins
# do). Only then are its results remembered and reused (`memo.py`: screening's results read again by
# the gate, the base model's verdicts kept across jobs).


ModeratorFactory = Callable[[Settings], Moderator]
_INSTANCES: dict[tuple, Moderator] = {}
_LOCK = threading.Lock()


def register_moderator(name: str, factory: ModeratorFactory) -> None:
    """Make a moderator selectable with `TUNEGATE_MODERATOR=name` (the `moderators` plugin registry)."""
    MODERATORS.register(name, factory)


def moderator_names() -> list[str]:
    return sorted(MODERATORS.names())


def get_moderator(settings: Settings) -> Moderator:
    """The moderator named by `settings.moderator`, built once per process and configuration."""
    factory = MODERATORS.get(settings.moderator)  # an unknown name is a 400 naming the setting
    key = (settings.moderator, str(settings.data_dir.resolve()), settings.moderation_url)
    with _LOCK:
        if key not in _INSTANCES:
            _INSTANCES[key] = factory(settings)
        return _INSTANCES[key]


def create_response(moderator: Moderator, texts: list[str], model: str | None = None) -> ModerationCreateResponse:
    return ModerationCreateResponse(
        id=new_id("modr"), model=model or moderator.model, results=moderate_untruncated(moderator, texts)
    )


class BuiltinModerator:
    """The built classifier (MiniLM + per-category heads, `data/moderator/`): loaded, never trained here."""

    name = "builtin"
    model = DEFAULT_MODEL
    batch_size = 64

    def __init__(self, settings: Settings):
        from tunegate.safety.classifier import load_classifier

        self.classifier = load_classifier(settings)
        build_key = self.classifier.report.get("build_key")
        self.identity = f"builtin:{build_key}" if build_key else None

    def moderate(self, texts: list[str]) -> list[ModerationResult]:
        # A chat turn on one intra-op thread in place, larger batches in a thread that ends with them (threads.py).
        return run_sized(len(texts), self._moderate, texts)

    def _moderate(self, texts: list[str]) -> list[ModerationResult]:
        out: list[ModerationResult] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self.classifier.moderate(texts[start : start + self.batch_size]))
        return out


class HttpModerator:
    """Any OpenAI-compatible moderation endpoint at `settings.moderation_url` (with or without `/v1`)."""

    name = "http"
    timeout = 60.0

    def __init__(self, settings: Settings, api_key: str | None = None, model: str | None = None):
        import httpx

        if not settings.moderation_url:
            raise InvalidRequestError(
                "The `http` moderator needs a URL. Set TUNEGATE_MODERATION_URL to the base URL of an "
                "OpenAI-compatible moderation API, e.g. http://127.0.0.1:9000/v1.",
                param="moderation_url",
            )
        base = settings.moderation_url.rstrip("/")
        self.url = base + ("/moderations" if base.endswith("/v1") else "/v1/moderations")
        self.model = model or DEFAULT_MODEL
        self.identity = f"http:{self.url}:{self.model}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=self.timeout, headers=headers)

    def moderate(self, texts: list[str]) -> list[ModerationResult]:
        import httpx

        out: list[ModerationResult] = []
        for start in range(0, len(texts), MAX_INPUTS):
            chunk = texts[start : start + MAX_INPUTS]
            try:
                resp = self._client.post(self.url, json={"input": chunk, "model": self.model})
            except httpx.HTTPError as e:
                raise ServerError(
                    f"The moderation endpoint {self.url} could not be reached: {e}. Check "
                    "TUNEGATE_MODERATION_URL or switch to TUNEGATE_MODERATOR=builtin.",
                    code="moderation_unavailable",
                ) from e
            if resp.status_code != 200:
                raise ServerError(
                    f"The moderation endpoint {self.url} answered HTTP {resp.status_code}: {resp.text[:300]}",
                    code="moderation_unavailable",
                )
            results = ModerationCreateResponse.model_validate(resp.json()).results
            if len(results) != len(chunk):
                raise ServerError(
                    f"The moderation endpoint {self.url} returned {len(results)} results for {len(chunk)} inputs.",
                    code="moderation_unavailable",
                )
            out.extend(results)
        return out

    def close(self) -> None:
        self._client.close()


_SENTENCE_END = re.compile(r"(?<=[.!?\n])\s+")
WINDOW_CHARS = 160
# Tokens kept free in a packed window: special tokens, and words tokenised differently once joined.
READ_MARGIN = 8


def text_windows(text: str, max_chars: int = WINDOW_CHARS) -> list[str]:
    """The text, and for a longer text each of its sentences (very short ones joined, long ones cut),
    without repeats. Mean-pooled sentence embeddings dilute one harmful sentence inside a long or
    repetitive answer, so a long text is judged as a whole and sentence by sentence."""
    text = text.strip()
    if not text:
        return ["(empty)"]
    windows, current = [text[: max_chars * 4]], ""
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > max_chars:  # one very long sentence: hard cut
            windows.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        current = f"{current} {sentence}".strip()
        if len(current) >= 40:
            windows.append(current)
            current = ""
    if current:
        windows.append(current)
    return list(dict.fromkeys(windows))


def merge_results(results: list[ModerationResult]) -> ModerationResult:
    """One verdict for a text judged in windows: each category's highest score, flagged when any window is."""
    from tunegate.safety.schemas import Categories, CategoryScores

    first = results[0]
    scores = {c: max(r.scores()[c] for r in results) for c in CATEGORIES}
    flags = {c: any(c in r.flagged_categories() for r in results) for c in CATEGORIES}
    return first.model_copy(
        update={
            "flagged": any(flags.values()),
            "categories": Categories(**flags),
            "category_scores": CategoryScores(**scores),
        }
    )


def moderate_windows(moderator: Moderator, texts: list[str], max_chars: int = WINDOW_CHARS) -> list[ModerationResult]:
    """One result per text, each judged whole and in sentence windows (`text_windows`), in one batched
    call: a long text is never truncated, and one harmful sentence is not diluted by the rest."""
    spans, flat = [], []
    for t in texts:
        w = text_windows(t, max_chars)
        spans.append((len(flat), len(flat) + len(w)))
        flat.extend(w)
    results = moderator.moderate(flat) if flat else []
    return [merge_results(results[a:b]) for a, b in spans]


def reach_windows(text: str, tokenizer: Any, max_tokens: int) -> list[str]:
    """A long text as windows the classifier reads whole: consecutive sentences packed up to
    `max_tokens` tokens, each window starting with the last sentence of the one before (a passage
    across a boundary is read intact once), a sentence longer than that cut at token boundaries.
    Why not sentence by sentence: one sentence of a history lesson or a vet's advice read out of its
    context ("...and killed many of its defenders") is what the classifier flags; read with its
    neighbours, as a text of up to `max_tokens` tokens is read anyway, it is not. Harm after a long
    harmless start still gets a window of its own size at most."""
    pieces: list[tuple[str, int]] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        if not sentence:
            continue
        enc = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)
        offsets, start = enc["offset_mapping"], 0
        if not offsets:
            pieces.append((sentence, 0))
        while start < len(offsets):
            end = min(start + max_tokens, len(offsets))
            # Cut between words, not inside one: a word split in two is read as neither.
            while start + 1 < end < len(offsets) and offsets[end][0] == offsets[end - 1][1]:
                end -= 1
            pieces.append((sentence[offsets[start][0] : offsets[end - 1][1]], end - start))
            start = end
    windows: list[str] = []
    i = 0
    while i < len(pieces):
        j, used = i, 0
        while j < len(pieces) and (j == i or used + pieces[j][1] <= max_tokens):
            used += pieces[j][1]
            j += 1
        windows.append(" ".join(p for p, _ in pieces[i:j]))
        if j >= len(pieces):
            break
        i = max(j - 1, i + 1)
    return list(dict.fromkeys(windows)) or ["(empty)"]


def moderate_untruncated(
    moderator: Moderator, texts: list[str], batch_size: int = MAX_INPUTS
) -> list[ModerationResult]:
    """One result per text, each judged whole; a text longer than the built-in classifier reads (its
    encoder stops at `MAX_TOKENS` tokens) is judged in windows of that size over its whole length
    instead (`reach_windows`), so harm after a long harmless start is not cut off unseen. Shorter texts
    keep their whole-text verdict (sentence windows add false flags on benign training files).
    Another moderator reads long texts itself. Used by screening, the gate's evidence and
    `/v1/moderations`."""

    def in_batches(items: list[str]) -> list[ModerationResult]:
        out: list[ModerationResult] = []
        for start in range(0, len(items), batch_size):
            out.extend(moderator.moderate(items[start : start + batch_size]))
        return out

    results = in_batches(texts)
    tokenizer = getattr(getattr(getattr(moderator, "classifier", None), "encoder", None), "tokenizer", None)
    if tokenizer is None or not texts:
        return results
    from tunegate.safety.classifier import MAX_TOKENS

    budget = MAX_TOKENS - READ_MARGIN
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > MAX_TOKENS]
    spans, flat = [], []
    for i in long:
        w = reach_windows(texts[i], tokenizer, budget)
        spans.append((i, len(flat), len(flat) + len(w)))
        flat.extend(w)
    windowed = in_batches(flat)
    for i, a, b in spans:
        results[i] = merge_results(windowed[a:b])
    return results


def flagged_categories(moderator: Moderator, texts: list[str]) -> list[list[str]]:
    """For each text, the categories flagged in any of its windows (one batched moderation call)."""
    return [r.flagged_categories() for r in moderate_windows(moderator, texts)]
