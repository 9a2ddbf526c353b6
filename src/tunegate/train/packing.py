"""Padding-free packing: many examples in one row, each attending only to itself.

Owns the packed attention function registered with transformers under `PACKED_ATTENTION`, and
turning a list of tokenized examples into one packed row (ids, per-example position ids,
sequence boundaries, the positions that carry loss and their targets). Does not own tokenization
or masking (catalog/template.py) nor the batching order (data.py).

Why not a dense block-diagonal mask: on CPU its cost grows with the packed row length squared
(PERF-NOTES: 72 vs 132 loss tokens/s). Instead every projection and MLP runs over the whole row
with no padding at all, and attention runs per example with SDPA's causal kernel, so attention
costs the sum of the squared example lengths and examples cannot see each other by construction.
Because the attention function is not a known mask type, transformers builds no mask at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED_ATTENTION = "tunegate_packed"


def packed_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query (1, H, T, D), key/value (1, Hkv, T, D) -> (1, T, H, D), attending within each example.

    `cu_seq_lens_q` (the flash-attention keyword transformers passes down to attention) holds the
    example boundaries. Without it (e.g. a plain call) the row is one causal sequence.
    """
    cu = kwargs.get("cu_seq_lens_q")
    bounds = cu.tolist() if cu is not None else [0, query.shape[2]]
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        # One repeat for the whole row: cheaper than SDPA's GQA path per slice on CPU.
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if query.dtype != value.dtype:  # rotary embeddings may upcast q/k under autocast
        query, key = query.to(value.dtype), key.to(value.dtype)
    softcap, window = kwargs.get("softcap"), kwargs.get("sliding_window")
    if softcap or (window and max(e - s for s, e in zip(bounds[:-1], bounds[1:])) > window):
        # Gemma 2/3 cap attention logits and use local layers; SDPA's kernel can do neither.
        return _capped_attention(query, key, value, bounds, scaling, softcap, window), None
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, is_causal=True, scale=scaling
        )
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _capped_attention(query, key, value, bounds, scaling, softcap, window):
    """Per example, in plain torch: tanh-capped scores (Gemma) and a causal sliding window."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        scores = torch.matmul(query[:, :, s:e], key[:, :, s:e].transpose(-1, -2)) * scale
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        i = torch.arange(e - s, device=query.device)
        allowed = i[None, :] <= i[:, None]
        if window:
            allowed &= i[:, None] - i[None, :] < window
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
        outs.append(torch.matmul(probs, value[:, :, s:e]))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous()


AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)


@dataclass
class PackedRow:
    """One forward pass worth of examples, concatenated without padding."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T), restarting at 0 for every example
    cu_seq_lens: torch.Tensor  # (n + 1,) example boundaries in the row
    logit_positions: torch.Tensor  # (1, T) bool: positions whose next token is trained
    targets: torch.Tensor  # (n_loss,) the trained tokens, in row order
    n_tokens: int

    @property
    def n_loss(self) -> int:
        return int(self.targets.numel())

    def model_inputs(self, device: torch.device | str) -> dict:
        return {
            "input_ids": self.input_ids.to(device),
            "position_ids": self.position_ids.to(device),
            "cu_seq_lens_q": self.cu_seq_lens.to(device),
            "cu_seq_lens_k": self.cu_seq_lens.to(device),
            "logits_to_keep": self.logit_positions.to(device),
        }


def pack(examples: list[tuple[list[int], list[int]]]) -> PackedRow:
    """Concatenate (input_ids, loss_mask) pairs; token p is trained from the logits at p - 1."""
    ids: list[int] = []
    positions: list[int] = []
    keep: list[bool] = []
    targets: list[int] = []
    bounds = [0]
    for input_ids, loss_mask in examples:
        n = len(input_ids)
        ids.extend(input_ids)
        positions.extend(range(n))
        # Position p predicts token p + 1; the last position of an example predicts nothing.
        for p in range(n):
            trained_next = p + 1 < n and loss_mask[p + 1] == 1
            keep.append(trained_next)
            if trained_next:
                targets.append(input_ids[p + 1])
        bounds.append(bounds[-1] + n)
    return PackedRow(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        cu_seq_lens=torch.tensor(bounds, dtype=torch.int32),
        logit_positions=torch.tensor([keep], dtype=torch.bool),
        targets=torch.tensor(targets, dtype=torch.long),
        n_tokens=len(ids),
    )
