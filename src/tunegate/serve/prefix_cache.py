"""Prefix caching: the KV of recent prompts, so a prompt that begins like one seen before (a shared
system prompt, the gate's and evals' repeated instructions, the chat template's default system
message) prefills only the part that differs.

Owns the LRU of prompt KVs (per adapter: a LoRA on k/v projections changes the keys and values) and
the longest-common-prefix lookup. Exact by construction: in a causal model the K/V of the first p
tokens depend only on those p tokens, so any stored prompt that shares p leading tokens with a new
one gives the new one's first p columns. Does not own the forward that uses them (`serve/runner.py`).

Entry shapes: per layer, keys and values [1, H, L, D] of one prompt of L tokens (no padding).
Capacity is counted in tokens (memory per token = layers x 2 x H x D x 4 bytes: ~46 KB on SmolLM2-135M).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]


class PrefixCache:
    """LRU of prompt KVs (see module docstring). Used by one worker thread only."""

    def __init__(self, max_tokens: int, min_tokens: int = 16):
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens  # shorter shared prefixes are not worth a second forward
        self._entries: OrderedDict[tuple[Path | None, tuple[int, ...]], Layers] = OrderedDict()
        self._tokens = 0
        self.hits = 0
        self.tokens_saved = 0

    def lookup(self, adapter: Path | None, prompt: list[int]) -> tuple[int, Layers] | None:
        """(p, per-layer K/V of the first p tokens) for the longest prefix of `prompt` shared with a
        stored prompt of the same adapter; p leaves at least one token to run (its logits are needed)."""
        if self.max_tokens <= 0 or len(prompt) <= self.min_tokens:
            return None
        best, best_key = 0, None
        new = torch.tensor(prompt[:-1])
        for key in self._entries:
            if key[0] != adapter:
                continue
            old = torch.tensor(key[1][: len(new)])
            n = min(len(old), len(new))
            differ = (old[:n] != new[:n]).nonzero()
            shared = int(differ[0]) if len(differ) else n
            if shared > best:
                best, best_key = shared, key
        if best < self.min_tokens:
            return None
        self._entries.move_to_end(best_key)
        self.hits += 1
        self.tokens_saved += best
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in self._entries[best_key]]

    def store(self, adapter: Path | None, prompt: list[int], layers: Callable[[], Layers]) -> None:
        """Keep the K/V of all of `prompt` (`layers()` copies them out of the batch, called only when
        needed), evicting the least recently used prompts."""
        key = (adapter, tuple(prompt))
        if self.max_tokens <= 0 or len(prompt) < self.min_tokens or len(prompt) > self.max_tokens:
            return
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = layers()
        self._tokens += len(prompt)
        while self._tokens > self.max_tokens:
            (_, old), _ = self._entries.popitem(last=False)
            self._tokens -= len(old)

    def __len__(self) -> int:
        return len(self._entries)
