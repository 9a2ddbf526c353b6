"""The KV cache of a running batch: one row per running sequence, left-padded to a common length.

Owns the cache tensors and the row surgery continuous batching needs: expanding a prefill row to
one row per choice, merging a newly prefilled batch into the running one, appending the column of
a decode step, and dropping finished rows (trimming columns that became padding in every row).
Does not own the model forward (`serve/runner.py`) or which rows run (`serve/scheduler.py`).

Shapes (B = rows, L = columns, H = key/value heads, D = head size), for every decoder layer:

    keys, values  [B, H, L, D]   (transformers' `DynamicCache.layers[i].keys/.values`)
    mask          [B, L]         1 = a real token of the row, 0 = left padding

Row i's tokens are its columns where the mask is 1: its last `mask[i].sum()` columns, except after a
prefill on a cached prefix, where the row is [padding, prefix, padding, rest of the prompt]. Positions are passed to the model explicitly
(not derived from the column), so padding never shifts a sequence's rotary positions, and padding
columns can be added on the left or removed without recomputing anything.
"""

from __future__ import annotations

import torch


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class BatchCache:
    """A transformers `DynamicCache` plus the attention mask of its rows (see module docstring)."""

    def __init__(self, past, mask: torch.Tensor):
        self.past = past  # handed to the model as `past_key_values`; the forward appends to it in place
        self.mask = mask

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def _layers(self):
        return self.past.layers

    def expand(self, rows: list[int]) -> None:
        """Row j becomes old row `rows[j]` (one prefill row shared by a request's `n` choices)."""
        index = torch.tensor(rows, dtype=torch.long)
        for layer in self._layers():
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        self.mask = self.mask.index_select(0, index)

    def merge(self, other: BatchCache) -> None:
        """Append `other`'s rows after these, left-padding the shorter side to the common length."""
        width = max(self.length, other.length)
        mine, theirs = width - self.length, width - other.length
        for a, b in zip(self._layers(), other._layers()):
            a.keys = torch.cat([_pad_left(a.keys, mine, 2), _pad_left(b.keys, theirs, 2)])
            a.values = torch.cat([_pad_left(a.values, mine, 2), _pad_left(b.values, theirs, 2)])
        self.mask = torch.cat([_pad_left(self.mask, mine, 1), _pad_left(other.mask, theirs, 1)])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order) and trim the leading columns that are padding in all of them."""
        index = torch.tensor(rows, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(dim=0).long().argmax())
        self.mask = mask[:, first:]
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]

    def row(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row i's K/V without padding, per layer: [1, H, tokens of row i, D] (copies)."""
        cols = self.mask[i].nonzero().squeeze(1)
        return [
            (layer.keys[i : i + 1].index_select(2, cols), layer.values[i : i + 1].index_select(2, cols))
            for layer in self._layers()
        ]

    @classmethod
    def from_prefixes(cls, prefixes: list[list[tuple[torch.Tensor, torch.Tensor]]], lengths: list[int]) -> BatchCache:
        """A cache whose row i holds `prefixes[i]` (per layer [1, H, lengths[i], D]), left-padded."""
        from transformers import DynamicCache

        width = max(lengths)
        layers = []
        for j in range(len(prefixes[0])):
            keys = torch.cat([_pad_left(p[j][0], width - n, 2) for p, n in zip(prefixes, lengths)])
            values = torch.cat([_pad_left(p[j][1], width - n, 2) for p, n in zip(prefixes, lengths)])
            layers.append((keys, values))
        mask = torch.zeros((len(lengths), width), dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, width - n :] = 1
        return cls(DynamicCache(ddp_cache_data=layers), mask)

    def step_mask(self) -> torch.Tensor:
        """The mask for one more token per row (a decode step); the forward appends that column's K/V."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)
        return self.mask
