"""The serving engine interface: what any backend (the built-in transformers engine, later vLLM with
multi-LoRA) must provide to the chat-completions service.

Owns the engine contract and its plain data types. Does not own HTTP, prompt rendering or the
OpenAI response shapes (`serve/service.py` and `serve/protocol.py`).

The contract, written for a second backend:

- `submit(request)` takes an already tokenized prompt (rendered by the service with the base model's
  own chat template) and returns a `GenerationStream` at once, or raises `RateLimitError` (429)
  when the engine's queue is full, or a `TunegateError` when the model cannot be served (e.g. an
  adapter whose `meta.json` template hash differs from its base's: code `template_mismatch`).
- The stream yields `ChoiceOutput`s: text deltas per choice, already cut at stop strings (a stop
  string is never emitted) and never splitting a multi-byte character; each choice ends with one
  output carrying `finish_reason` "stop" or "length". It raises `TunegateError` on failures that
  happen later (timeout, adapter that fails to load).
- Closing the stream (`aclose()`, or a client that disconnects) frees the request's batch slots.
- Waiting requests of different organisations (then API keys) are admitted in turn, so one caller's
  burst cannot starve the others; a model or adapter that failed to load fails its requests at once
  (`check_model` raises the remembered error) until its files change.
- `GenerationRequest.logits_processors` are applied to each choice's logits before sampling.
- Requests for different adapters of one base are decoded together. A vLLM backend maps
  `ServableModel.adapter_path` to a `LoRARequest` and `SamplingParams` field for field.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from tunegate.catalog import BaseModelInfo
from tunegate.errors import TunegateError


@dataclass(frozen=True)
class ServableModel:
    """A model the caller may use: a base model, optionally with a PEFT adapter folder on top."""

    id: str
    base: BaseModelInfo
    adapter_path: Path | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Per-choice decoding settings (OpenAI semantics)."""

    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False  # benchmarks only: always generate max_tokens


class LogitsProcessor(Protocol):
    """Changes one sequence's next-token logits before sampling (logit_bias, grammar constraints).

    Called once per generated token with the token ids the sequence generated so far and its row of
    logits ([vocab], float32); returns the logits to sample from (it may modify the row in place)."""

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor: ...


@dataclass
class GenerationRequest:
    model: ServableModel
    prompt_ids: list[int]
    params: SamplingParams
    n: int = 1
    request_id: str = ""
    org_id: str = ""
    """Who asks: the engine shares its batch fairly across organisations, then across their keys."""
    key_id: str = ""
    logits_processors: tuple[Callable[[], LogitsProcessor], ...] = ()
    """Factories: every choice gets its own processors (they may keep per-sequence state)."""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]] = field(default_factory=list)


@dataclass
class ChoiceOutput:
    """New output of one choice since its previous `ChoiceOutput`."""

    index: int
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" on the choice's last output
    completion_tokens: int = 0  # tokens generated so far by this choice


class GenerationStream(abc.ABC):
    """Async iterator of `ChoiceOutput`s for one request; `aclose()` cancels it."""

    def __aiter__(self) -> AsyncIterator[ChoiceOutput]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> ChoiceOutput: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class Engine(abc.ABC):
    """A serving backend. One engine serves every base model and adapter of a server."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called once when the server starts."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Called once when the server stops; pending streams end with an error."""

    def stats(self) -> dict:
        """Counters per base model for operators and tests (steps, batch sizes, cancellations)."""
        return {}

    @abc.abstractmethod
    def tokenizer(self, base: BaseModelInfo):
        """The base model's own tokenizer (the service renders and counts prompts with it)."""

    @abc.abstractmethod
    def check_model(self, model: ServableModel) -> None:
        """Raise a `TunegateError` if `model` cannot be served (missing files, template mismatch)."""

    @abc.abstractmethod
    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue `request`; raises `RateLimitError` when the queue is full."""


class GenerationTimeoutError(TunegateError):
    """A request that did not finish within `Settings.request_timeout_seconds`."""

    status_code = 408
    type = "timeout_error"
