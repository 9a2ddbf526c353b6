"""Safety data mixing: the project's own refusal examples, mixed into SFT data.

Owns reading `data/refusals.jsonl` (written for tunegate: mild, placeholder-level harmful requests
answered with a polite refusal and a safe alternative) and `mix_safety_examples`, which the
trainer calls. Does not own whether mixing is on (policy / job options) or tokenization.
"""

from __future__ import annotations

import json
import math
import random
from functools import lru_cache
from pathlib import Path

REFUSALS_PATH = Path(__file__).parent / "data" / "refusals.jsonl"


@lru_cache(maxsize=1)
def _refusals() -> tuple[str, ...]:
    return tuple(line for line in REFUSALS_PATH.read_text(encoding="utf-8").splitlines() if line.strip())


def refusal_examples() -> list[dict]:
    """Fresh copies of the refusal examples as chat examples (`{"messages": [...]}`)."""
    return [{"messages": json.loads(line)["messages"]} for line in _refusals()]


def n_safety_examples(n_examples: int, fraction: float) -> int:
    """How many to add so that they make up about `fraction` of the mixed data (at least one)."""
    if fraction <= 0 or n_examples <= 0:
        return 0
    return max(1, math.ceil(fraction * n_examples / (1.0 - fraction)))


def mix_safety_examples(examples: list[dict], fraction: float = 0.03, seed: int = 0) -> list[dict]:
    """`examples` plus refusal examples making up about `fraction` of the result, at seeded positions.

    The input list is not changed. Refusals are drawn without repetition until all have been used.
    """
    k = n_safety_examples(len(examples), fraction)
    rng = random.Random(seed)
    pool = refusal_examples()
    chosen: list[dict] = []
    while len(chosen) < k:
        rng.shuffle(pool)
        chosen.extend(pool[: k - len(chosen)])
        pool = refusal_examples()
    mixed = list(examples)
    for ex in chosen:
        mixed.insert(rng.randint(0, len(mixed)), ex)
    return mixed
