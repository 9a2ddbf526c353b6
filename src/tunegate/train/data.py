"""Training data for the recipe: read chat JSONL, tokenize with the loss mask, order and batch it.

Owns reading the (already validated) training and validation files, truncation at the maximum
sequence length, the seeded per-epoch example order, and cutting an optimizer batch into
micro-batches by a token budget. Rendering and the assistant loss mask come from
catalog/template.py (the one place that computes them); file validation belongs to files/.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tunegate.catalog.template import tokenize_examples, with_tools
from tunegate.errors import InvalidRequestError


@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[int]

    @property
    def n_loss(self) -> int:
        # Token 0 is never predicted, so it never carries loss.
        return sum(self.loss_mask[1:])


@dataclass
class Dataset:
    examples: list[Example]
    sha256: str
    n_truncated: int  # examples cut at max_seq_len
    n_dropped: int  # examples with no trained token left (all weights 0, or truncated away)

    @property
    def n_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_conversations(path: str | Path, param: str = "training_file") -> list[list[dict]]:
    """The `messages` of every line. Files were validated on upload; this only guards the shape."""
    conversations = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
                messages = with_tools(example["messages"], example.get("tools"))
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidRequestError(
                    f"Line {lineno} of the {param.replace('_', ' ')} is not a chat example with `messages` "
                    f"({type(exc).__name__}). Validate it with `tunegate validate FILE` and upload it again.",
                    param=param,
                    code=f"invalid_{param}",
                ) from exc
            conversations.append(messages)
    return conversations


def load_dataset(path: str | Path, tokenizer, max_seq_len: int, param: str = "training_file") -> Dataset:
    conversations = read_conversations(path, param)
    examples, truncated, dropped = [], 0, 0
    for tok in tokenize_examples(tokenizer, conversations):
        ids, mask = tok.input_ids, tok.loss_mask
        if len(ids) > max_seq_len:
            ids, mask = ids[:max_seq_len], mask[:max_seq_len]
            truncated += 1
        example = Example(ids, mask)
        if example.n_loss == 0:
            dropped += 1
            continue
        examples.append(example)
    if not examples:
        raise InvalidRequestError(
            f"The {param.replace('_', ' ')} has no example with a trained assistant message "
            f"(after truncation at {max_seq_len} tokens). Add assistant messages whose `weight` is not 0.",
            param=param,
            code=f"invalid_{param}",
        )
    return Dataset(examples, file_sha256(path), truncated, dropped)


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """A permutation that depends only on (seed, epoch), so a resumed run replays the same order."""
    order = list(range(n_examples))
    random.Random(f"tunegate:{seed}:{epoch}").shuffle(order)
    return order


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = epoch_order(n_examples, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def micro_batches(examples: list[Example], token_budget: int) -> list[list[Example]]:
    """Consecutive groups of at most `token_budget` tokens (an over-long example goes alone)."""
    groups: list[list[Example]] = []
    used = token_budget
    for ex in examples:
        if used + len(ex.input_ids) > token_budget:
            groups.append([])
            used = 0
        groups[-1].append(ex)
        used += len(ex.input_ids)
    return groups
