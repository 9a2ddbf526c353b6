"""Choosing the next token of each sequence in a batch, with OpenAI's sampling semantics.

Owns penalties, temperature, top_p, seeded per-sequence random generators and log-probabilities.
Does not own the model forward or text handling (`serve/runner.py`, `serve/detok.py`).

Order (as OpenAI documents it): presence/frequency penalties on the raw logits, then temperature
(0 = greedy), then top_p. Reported log-probabilities are those of the model's raw distribution.
"""

from __future__ import annotations

import secrets

import torch

from tunegate.serve.engine import SamplingParams


def make_generator(seed: int | None, choice: int) -> torch.Generator:
    """Each choice gets its own generator, so a seeded request is reproducible whatever else shares
    its batch, and the `n` choices of one seeded request still differ from each other."""
    g = torch.Generator()
    if seed is None:
        g.manual_seed(secrets.randbits(63))
    else:
        g.manual_seed((seed * 1_000_003 + choice) % (2**63))
    return g


def apply_penalties(logits: torch.Tensor, output_ids: list[int], params: SamplingParams) -> torch.Tensor:
    """OpenAI's formula over the tokens generated so far: `mu[j] -= c[j] * freq + (c[j] > 0) * presence`."""
    if not output_ids or (params.presence_penalty == 0 and params.frequency_penalty == 0):
        return logits
    ids = torch.tensor(output_ids, dtype=torch.long)
    counts = torch.bincount(ids, minlength=logits.shape[-1]).to(logits.dtype)
    return logits - counts * params.frequency_penalty - (counts > 0).to(logits.dtype) * params.presence_penalty


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from a 1-D row of (already penalised) logits."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < params.top_p
        keep[0] = True
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def next_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    outputs: list[list[int]],
) -> list[int]:
    """The next token of every row of `logits` ([batch, vocab])."""
    plain_greedy = [p.temperature == 0 and p.presence_penalty == 0 and p.frequency_penalty == 0 for p in params]
    out: list[int] = [0] * len(params)
    if any(plain_greedy):
        greedy = torch.argmax(logits, dim=-1).tolist()
        for i, g in enumerate(plain_greedy):
            if g:
                out[i] = greedy[i]
    for i, p in enumerate(params):
        if not plain_greedy[i]:
            out[i] = sample_row(apply_penalties(logits[i], outputs[i], p), p, generators[i])
    return out


def logprobs_of(logits: torch.Tensor, rows: list[int], tokens: list[int], tops: list[int]):
    """For each selected row: (logprob of its chosen token, [(token id, logprob)] of its top-k)."""
    if not rows:
        return []
    logp = torch.log_softmax(logits[rows].float(), dim=-1)
    chosen = logp[torch.arange(len(rows)), torch.tensor([tokens[r] for r in rows])].tolist()
    k = max(tops[r] for r in rows)
    top_vals, top_ids = torch.topk(logp, k, dim=-1) if k else (None, None)
    result = []
    for j, r in enumerate(rows):
        top = []
        if tops[r]:
            top = list(zip(top_ids[j, : tops[r]].tolist(), top_vals[j, : tops[r]].tolist()))
        result.append((chosen[j], top))
    return result
