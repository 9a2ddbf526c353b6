"""The vLLM engine (`TUNEGATE_ENGINE=vllm`): the Engine interface of serve/engine.py on vLLM's AsyncLLM.

Owns mapping our requests onto vLLM, field for field, and vLLM's outputs back onto `ChoiceOutput`s:

- `SamplingParams` -> vLLM `SamplingParams` (`to_vllm_sampling`): n, max_tokens, temperature (0 is
  greedy in both), top_p, stop strings (never emitted: `include_stop_str_in_output=False`), the
  template's end-of-turn token as a stop token (catalog/features.py), seed (vLLM seeds choice i of
  a request with seed + i, so the n choices differ and the request is reproducible), presence and
  frequency penalties (OpenAI's definitions in both), logprobs (OpenAI's `top_logprobs` k is vLLM's
  `logprobs=k`, which also returns the sampled token), ignore_eos; deltas (`RequestOutputKind.DELTA`).
- `ServableModel.adapter_path` -> `LoRARequest` with a stable integer id per adapter folder; vLLM
  loads adapters on demand and keeps `max_cpu_loras` of them, `max_loras` in one batch. Continuous
  batching and the KV cache are vLLM's own.
- `check_model`: the same template-hash and adapter-format checks as the built-in engine
  (serve/lora.py), plus the rank limit vLLM was started with.
- Not mapped: our logits processors (structured outputs, tools, logit_bias: a clear 400, never
  unconstrained output) and the fair turns across organisations (vLLM schedules first come, first served).

One AsyncLLM per base model, started on first use. vLLM is an optional extra (`tunegate[vllm]`,
CUDA only); without it this engine refuses to start with the install command. Knobs are
`TUNEGATE_VLLM_*` (`VLLMSettings`). Does not own rendering, moderation or the OpenAI shapes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tunegate.catalog import BaseModelInfo, load_tokenizer
from tunegate.errors import InvalidRequestError, RateLimitError, ServerError
from tunegate.serve.engine import (
    ChoiceOutput,
    Engine,
    GenerationRequest,
    GenerationStream,
    GenerationTimeoutError,
    SamplingParams,
    ServableModel,
    TokenLogprob,
)
from tunegate.settings import Settings

log = logging.getLogger("tunegate.serve.vllm")
INSTALL = "pip install 'tunegate[vllm]' (vLLM needs a CUDA GPU)"


class VLLMSettings(BaseSettings):
    """vLLM's knobs, from `TUNEGATE_VLLM_*`."""

    model_config = SettingsConfigDict(env_prefix="TUNEGATE_VLLM_", extra="ignore")

    max_loras: int = Field(default=4, ge=1, description="Adapters decoded together in one batch.")
    max_cpu_loras: int | None = Field(default=None, description="Adapters kept loaded; default: adapter_cache_size.")
    max_lora_rank: int = Field(default=64, description="Largest LoRA rank served (one of vLLM's sizes).")
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    max_num_seqs: int = Field(default=256, ge=1, description="Sequences decoded together (continuous batching).")
    max_model_len: int | None = Field(default=None, description="Default: the base model's context length.")
    dtype: str = "auto"
    enforce_eager: bool = Field(default=False, description="Skip CUDA graphs (faster start, slower decode).")


def to_vllm_sampling(params: SamplingParams, n: int, stop_token_ids: list[int]):
    """Our per-request sampling settings as vLLM's `SamplingParams`."""
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VSamplingParams

    return VSamplingParams(
        n=n,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=list(params.stop),
        stop_token_ids=list(stop_token_ids),
        include_stop_str_in_output=False,
        seed=params.seed,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        logprobs=params.top_logprobs if params.logprobs else None,
        ignore_eos=params.ignore_eos,
        skip_special_tokens=True,
        output_kind=RequestOutputKind.DELTA,
    )


class LoraIds:
    """A stable positive integer per adapter folder (vLLM identifies loaded adapters by it)."""

    def __init__(self):
        self._ids: dict[str, int] = {}
        self._next = itertools.count(1)

    def request(self, model: ServableModel):
        if model.adapter_path is None:
            return None
        from vllm.lora.request import LoRARequest

        path = str(Path(model.adapter_path).resolve())
        if path not in self._ids:
            self._ids[path] = next(self._next)
        return LoRARequest(lora_name=model.id, lora_int_id=self._ids[path], lora_path=path)


def to_choice_outputs(request_output, token_bytes, top_logprobs: int) -> list[ChoiceOutput]:
    """One vLLM `RequestOutput` (delta kind) as our `ChoiceOutput`s, one per choice with news."""
    outs = []
    for c in request_output.outputs:
        if c.finish_reason not in (None, "stop", "length"):
            raise ServerError(f"vLLM ended choice {c.index} with `{c.finish_reason}`; retry the request.")
        logprobs = []
        for token_id, candidates in zip(c.token_ids, c.logprobs or []):
            token, raw = token_bytes(token_id)
            ranked = sorted(candidates.items(), key=lambda kv: kv[1].rank or 0)
            top = [(*token_bytes(t), lp.logprob) for t, lp in ranked if lp.rank is not None and lp.rank <= top_logprobs]
            logprobs.append(TokenLogprob(token, raw, candidates[token_id].logprob, top[:top_logprobs]))
        outs.append(
            ChoiceOutput(
                index=c.index,
                text=c.text,
                logprobs=logprobs,
                finish_reason=c.finish_reason,
                completion_tokens=len(c.token_ids),
            )
        )
    return outs


class _Stream(GenerationStream):
    def __init__(self, engine: VLLMEngine, request: GenerationRequest, request_id: str):
        self.engine, self.request, self.request_id = engine, request, request_id
        self.pending: deque[ChoiceOutput] = deque()
        self.produced = [0] * request.n  # tokens so far per choice (vLLM deltas count only the new ones)
        self.deadline = time.monotonic() + engine.settings.request_timeout_seconds
        self.source = None
        self.closed = False

    async def __anext__(self) -> ChoiceOutput:
        while not self.pending:
            if self.closed:
                raise StopAsyncIteration
            if self.source is None:
                self.source = await self.engine._generate(self.request, self.request_id)
            remaining = self.deadline - time.monotonic()
            try:
                output = await asyncio.wait_for(self.source.__anext__(), timeout=max(remaining, 0.001))
            except StopAsyncIteration:
                self.closed = True
                self.engine._done(self)
                raise
            except TimeoutError:
                await self.aclose()
                raise GenerationTimeoutError(
                    f"The request did not finish within {self.engine.settings.request_timeout_seconds:g} seconds.",
                    code="timeout",
                ) from None
            p = self.request.params
            for out in to_choice_outputs(
                output, self.engine._token_bytes(self.request.model.base), p.top_logprobs if p.logprobs else 0
            ):
                self.produced[out.index] += out.completion_tokens
                out.completion_tokens = self.produced[out.index]
                self.pending.append(out)
        return self.pending.popleft()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine._done(self)
            await self.engine._abort(self.request.model.base, self.request_id)


class VLLMEngine(Engine):
    """Every base model of the server on vLLM, adapters as LoRA requests."""

    def __init__(self, settings: Settings, vllm_settings: VLLMSettings | None = None):
        self.settings = settings
        self.vllm = vllm_settings or VLLMSettings()
        self.loras = LoraIds()
        self._engines: dict[str, Any] = {}
        self._bytes: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._active: set[_Stream] = set()
        self._ids = itertools.count()

    async def start(self) -> None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ServerError(
                f"TUNEGATE_ENGINE=vllm, but vLLM is not installed: {INSTALL}.", code="engine_unavailable"
            ) from None

    async def stop(self) -> None:
        for stream in list(self._active):
            await stream.aclose()
        for engine in self._engines.values():
            engine.shutdown()
        self._engines.clear()

    def tokenizer(self, base: BaseModelInfo):
        return load_tokenizer(base.path)

    def check_model(self, model: ServableModel) -> None:
        if model.adapter_path is None:
            return
        from tunegate.serve.lora import check_adapter, read_config

        path = Path(model.adapter_path)
        check_adapter(path, model.base)
        rank = int(read_config(path).get("r") or 0)
        if rank > self.vllm.max_lora_rank:
            raise InvalidRequestError(
                f"The adapter of `{model.id}` has LoRA rank {rank}, above the rank this server's vLLM engine was "
                f"started with ({self.vllm.max_lora_rank}); raise TUNEGATE_VLLM_MAX_LORA_RANK.",
                param="model",
                code="adapter_rank_too_large",
            )

    def submit(self, request: GenerationRequest) -> GenerationStream:
        if getattr(request, "logits_processors", ()):
            # vLLM's V1 engine takes no per-request logits processors; silently dropping ours would serve
            # unconstrained output for `response_format`, `tools` and `logit_bias`.
            raise InvalidRequestError(
                "This server's vLLM engine does not apply `response_format`, `tools` or `logit_bias` yet; send the "
                "request without them, or use the transformers engine (TUNEGATE_ENGINE=transformers).",
                param="response_format",
                code="unsupported_parameter",
            )
        if len(self._active) >= self.vllm.max_num_seqs + self.settings.max_queue:
            raise RateLimitError(
                f"The server is busy ({len(self._active)} requests in flight); retry shortly.",
                code="rate_limit_exceeded",
            )
        stream = _Stream(self, request, request.request_id or f"tg-{next(self._ids)}")
        self._active.add(stream)
        return stream

    # ---- internals

    def engine_args(self, base: BaseModelInfo):
        from vllm.engine.arg_utils import AsyncEngineArgs

        return AsyncEngineArgs(
            model=str(base.path),
            tokenizer=str(base.path),
            dtype=self.vllm.dtype,
            max_model_len=self.vllm.max_model_len or base.context_length,
            enable_lora=True,
            max_loras=self.vllm.max_loras,
            max_lora_rank=self.vllm.max_lora_rank,
            max_cpu_loras=self.vllm.max_cpu_loras or max(self.settings.adapter_cache_size, self.vllm.max_loras),
            gpu_memory_utilization=self.vllm.gpu_memory_utilization,
            max_num_seqs=self.vllm.max_num_seqs,
            enforce_eager=self.vllm.enforce_eager,
            enable_prefix_caching=True,
            disable_log_stats=True,
        )

    async def _engine(self, base: BaseModelInfo):
        engine = self._engines.get(base.name)
        if engine is None:
            async with self._lock:
                engine = self._engines.get(base.name)
                if engine is None:
                    from vllm.v1.engine.async_llm import AsyncLLM

                    log.info("starting vLLM for base model %s", base.name)
                    engine = await asyncio.to_thread(AsyncLLM.from_engine_args, self.engine_args(base))
                    self._engines[base.name] = engine
        return engine

    def _token_bytes(self, base: BaseModelInfo):
        if base.name not in self._bytes:
            from tunegate.serve.detok import TokenBytes

            self._bytes[base.name] = TokenBytes(self.tokenizer(base))
        return self._bytes[base.name]

    def stop_token_ids(self, base: BaseModelInfo) -> list[int]:
        eot = base.features.eot_token_id if base.features else None
        return [eot] if eot is not None else []

    async def _generate(self, request: GenerationRequest, request_id: str):
        engine = await self._engine(request.model.base)
        params = to_vllm_sampling(request.params, request.n, self.stop_token_ids(request.model.base))
        return engine.generate(
            {"prompt_token_ids": list(request.prompt_ids)},
            params,
            request_id,
            lora_request=self.loras.request(request.model),
        ).__aiter__()

    async def _abort(self, base: BaseModelInfo, request_id: str) -> None:
        engine = self._engines.get(base.name)
        if engine is not None:
            await engine.abort(request_id)

    def _done(self, stream: _Stream) -> None:
        self._active.discard(stream)
