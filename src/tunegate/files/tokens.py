"""Token statistics of a dataset with the model's real tokenizer and chat template, in bounded
memory, and OpenAI's automatic epoch rule.

Owns `auto_n_epochs` (the trainer imports it from here, so the epoch count validation shows is the
one training uses) and `TokenCounter`, which renders examples and tokenizes them in batches. It
keeps only value counts of the per-example lengths (a 100M-token file has at most ~14,000 distinct
lengths), so the quantiles are exact and memory does not grow with the number of examples.
Rendering and the loss mask come from `catalog/template.py`, the same code the trainer uses, so
"trained tokens" here are exactly the tokens the trainer puts loss on. Does not own the structural
checks (files/checks.py) or the report (files/validate.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel

from tunegate.catalog.features import UnsupportedRoleError
from tunegate.catalog.template import Rendered, count_rendered, render_with_spans

# A batch goes to the tokenizer at this many examples or characters (long lines bound the memory).
BATCH_EXAMPLES = 256
BATCH_CHARS = 4 << 20

MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 100, 25_000
MIN_EPOCHS, MAX_EPOCHS, DEFAULT_EPOCHS = 1, 25, 3


def auto_n_epochs(n_examples: int) -> int:
    """OpenAI's rule: 3 epochs, raised or lowered so that examples x epochs lands in 100..25,000,
    never outside 1..25 epochs."""
    n = max(int(n_examples), 1)
    if n * DEFAULT_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, -(-MIN_TARGET_EXAMPLES // n))
    if n * DEFAULT_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return DEFAULT_EPOCHS


class Distribution(BaseModel):
    min: int
    p50: int
    p95: int
    max: int
    mean: float


class HistogramBin(BaseModel):
    start: int
    end: int
    count: int


class TokenStats(BaseModel):
    context_length: int | None
    n_examples: int
    total_tokens: int
    """Tokens of all examples as rendered by the chat template (before truncation)."""
    trained_tokens: int
    """Tokens that carry loss: assistant messages with weight 1, incl. their end-of-turn token (after truncation)."""
    per_example_total: Distribution | None
    per_example_trained: Distribution | None
    n_truncated: int
    """Examples longer than the context length: truncated at training time."""
    n_without_trained_tokens: int
    auto_n_epochs: int
    estimated_trained_tokens: int
    """trained_tokens x auto_n_epochs: what an `auto` job bills (OpenAI's estimate)."""
    histogram: list[HistogramBin]
    """Examples by total token length, for a chart."""


def _distribution(counts: Counter) -> Distribution | None:
    n = sum(counts.values())
    if not n:
        return None
    keys = sorted(counts)

    def pct(q: float) -> int:  # nearest rank: the smallest value with at least q of the examples at or below
        rank, seen = max(1, math.ceil(q * n)), 0
        for k in keys:
            seen += counts[k]
            if seen >= rank:
                return k
        return keys[-1]

    return Distribution(
        min=keys[0], p50=pct(0.5), p95=pct(0.95), max=keys[-1], mean=round(sum(k * c for k, c in counts.items()) / n, 2)
    )


# report(code, line, param, message, is_error): how the counter adds problems to the report.
Report = Callable[[str, int, "str | None", str, bool], None]


class TokenCounter:
    """Renders and tokenizes examples in batches; keeps per-length counts only."""

    def __init__(self, tokenizer, context_length: int | None, report: Report):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.report = report
        self.total = Counter()
        self.trained = Counter()
        self.total_tokens = self.trained_tokens = self.n_truncated = self.n_untrained = 0
        self._pending: list[tuple[int, Rendered]] = []
        self._pending_chars = 0

    def add(self, line: int, messages: list[dict]) -> None:
        try:
            rendered = render_with_spans(self.tokenizer, messages)
        except UnsupportedRoleError as exc:  # a role this model's template rejects: say which, and the fix
            self.report(exc.code, line, "messages", exc.message, True)
            return
        except Exception as exc:  # a template may raise anything: jinja2 errors, its own raise_exception()
            self.report(
                "template_error",
                line,
                "messages",
                f"The model's chat template cannot render this example "
                f"({str(exc)[:200]}). Change the messages so the template accepts them, e.g. put the roles "
                "in the order it expects.",
                True,
            )
            return
        self._pending.append((line, rendered))
        self._pending_chars += len(rendered.text)
        if len(self._pending) >= BATCH_EXAMPLES or self._pending_chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        batch, self._pending, self._pending_chars = self._pending, [], 0
        if not batch:
            return
        try:
            results = count_rendered(self.tokenizer, [r for _, r in batch], self.context_length)
        except Exception:
            # One text the tokenizer refuses fails the whole batch: redo it one by one to name the line.
            results = [self._one(line, r) for line, r in batch]
        for (line, _), counts in zip(batch, results):
            if counts is not None:
                self._count(line, *counts)

    def _one(self, line: int, rendered: Rendered) -> tuple[int, int, int] | None:
        try:
            return count_rendered(self.tokenizer, [rendered], self.context_length)[0]
        except Exception as exc:
            self.report(
                "tokenization_error",
                line,
                "messages",
                f"The tokenizer cannot encode this example "
                f"({str(exc)[:200]}). Remove invalid characters such as unpaired surrogate escapes "
                "(\\ud800-\\udfff).",
                True,
            )
            return None

    def _count(self, line: int, n_total: int, n_trained: int, n_kept: int) -> None:
        """n_kept: trained tokens within the context length (what training keeps after truncation)."""
        ctx = self.context_length
        truncated = ctx is not None and n_total > ctx
        self.total[n_total] += 1
        self.trained[n_kept] += 1
        self.total_tokens += n_total
        self.trained_tokens += n_kept
        self.n_truncated += truncated
        self.n_untrained += n_kept == 0
        if truncated:
            lost = n_trained - n_kept
            self.report(
                "example_truncated",
                line,
                "messages",
                f"The example has {n_total:,} tokens with the chat "
                f"template, more than the model's context length of {ctx:,}: training truncates it"
                f"{f' and {lost:,} trained tokens are lost' if lost else ''}. Shorten it or split the "
                "conversation.",
                False,
            )

    def stats(self, n_examples: int) -> TokenStats:
        self.flush()
        epochs = auto_n_epochs(n_examples)
        return TokenStats(
            context_length=self.context_length,
            n_examples=sum(self.total.values()),
            total_tokens=self.total_tokens,
            trained_tokens=self.trained_tokens,
            per_example_total=_distribution(self.total),
            per_example_trained=_distribution(self.trained),
            n_truncated=self.n_truncated,
            n_without_trained_tokens=self.n_untrained,
            auto_n_epochs=epochs,
            estimated_trained_tokens=self.trained_tokens * epochs,
            histogram=self._histogram(),
        )

    def _histogram(self, bins: int = 20) -> list[HistogramBin]:
        if not self.total:
            return []
        lo, hi = min(self.total), max(self.total)
        width = max(1, math.ceil((hi - lo + 1) / bins))
        out = [
            HistogramBin(start=lo + i * width, end=lo + (i + 1) * width - 1, count=0)
            for i in range(math.ceil((hi - lo + 1) / width))
        ]
        for k, c in self.total.items():
            out[(k - lo) // width].count += c
        return out
