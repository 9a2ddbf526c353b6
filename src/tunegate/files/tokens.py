"""Token statistics of a dataset with the model's real tokenizer and chat template, in bounded
memory, and OpenAI's automatic epoch rule.

Owns counting only: rendering and the loss mask come from `catalog/template.py`, the same code the
trainer uses, so "trained tokens" here are exactly the tokens the trainer puts loss on.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel

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

    def pct(q: float) -> int:
        rank, seen = q * (n - 1), 0
        for k in keys:
            seen += counts[k]
            if seen > rank:
                return k
        return keys[-1]

    return Distribution(min=keys[0], p50=pct(0.5), p95=pct(0.95), max=keys[-1],
                        mean=round(sum(k * c for k, c in counts.items()) / n, 2))


class TokenCounter:
    """Accumulates per-example counts; memory is bounded by the number of distinct lengths."""

    def __init__(self, context_length: int | None):
        self.context_length = context_length
        self.total = Counter()
        self.trained = Counter()
        self.total_tokens = self.trained_tokens = self.n_truncated = self.n_untrained = 0

    def add(self, n_total: int, mask: list[int]) -> bool:
        """Count one example; True when it is longer than the context (truncated)."""
        truncated = self.context_length is not None and n_total > self.context_length
        n_trained = sum(mask[: self.context_length] if truncated else mask)
        self.total[n_total] += 1
        self.trained[n_trained] += 1
        self.total_tokens += n_total
        self.trained_tokens += n_trained
        self.n_truncated += truncated
        self.n_untrained += n_trained == 0
        return truncated

    def stats(self, n_examples: int) -> TokenStats:
        epochs = auto_n_epochs(n_examples)
        return TokenStats(
            context_length=self.context_length, n_examples=sum(self.total.values()), total_tokens=self.total_tokens,
            trained_tokens=self.trained_tokens, per_example_total=_distribution(self.total),
            per_example_trained=_distribution(self.trained), n_truncated=self.n_truncated,
            n_without_trained_tokens=self.n_untrained, auto_n_epochs=epochs,
            estimated_trained_tokens=self.trained_tokens * epochs, histogram=self._histogram())

    def _histogram(self, bins: int = 20) -> list[HistogramBin]:
        if not self.total:
            return []
        lo, hi = min(self.total), max(self.total)
        width = max(1, -(-(hi - lo + 1) // bins))
        out = [HistogramBin(start=lo + i * width, end=lo + (i + 1) * width - 1, count=0)
               for i in range(-(-(hi - lo + 1) // width))]
        for k, c in self.total.items():
            out[(k - lo) // width].count += c
        return out
