"""The built-in engine: transformers models with continuous batching and batched multi-LoRA.

Owns the engine loop and the streams: one worker thread per base model composes the four parts of
serving, each testable alone:

    scheduler.py  waiting requests, fair admission across organisations and keys, deadlines
    runner.py     the loaded model and adapters: prefill and the mixed-adapter decode step
    kv_cache.py   the running batch's KV cache: expand, merge, trim
    prefix_cache.py  recent prompts' K/V, so a shared beginning is computed once
    output.py     logits processors, sampling, stops, detokenisation, log-probabilities

Between two decode steps the worker drops cancelled and timed-out requests, admits waiting choices
(prefilled together, then merged into the running batch) and decodes every running sequence in one
forward pass whatever their adapters. The event loop only ever waits on asyncio queues.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunegate.catalog import BaseModelInfo, load_tokenizer
from tunegate.errors import RateLimitError, ServerError, TunegateError
from tunegate.serve.engine import (
    ChoiceOutput,
    Engine,
    GenerationRequest,
    GenerationStream,
    GenerationTimeoutError,
    ServableModel,
)
from tunegate.serve.kv_cache import BatchCache
from tunegate.serve.lora import check_adapter
from tunegate.serve.output import OutputProcessor, SequenceState
from tunegate.serve.prefix_cache import PrefixCache
from tunegate.serve.runner import LoadFailures, ModelRunner
from tunegate.serve.scheduler import Admission, Pending, Scheduler
from tunegate.settings import Settings

log = logging.getLogger("tunegate.serve")


class _Stream(GenerationStream):
    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]):
        self.loop = loop
        self.wake = wake
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending: Pending | None = None
        self.ended = False

    def put(self, item) -> None:  # called from the worker thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            pass

    async def __anext__(self) -> ChoiceOutput:
        if self.ended:
            raise StopAsyncIteration
        item = await self.queue.get()
        if item is None or isinstance(item, BaseException):
            self.ended = True
            if item is None:
                raise StopAsyncIteration
            raise item
        return item

    async def aclose(self) -> None:
        if self.pending is not None and not self.ended:
            self.ended = True
            self.pending.cancelled = True
            self.wake()


@dataclass(eq=False)
class _Running:
    """One sequence in the batch: its request, adapter slot, next position and output state."""

    p: Pending
    stream: _Stream
    slot: int
    pos: int
    state: SequenceState


class HFEngine(Engine):
    """transformers + batched multi-LoRA engine (see module docstring)."""

    def __init__(self, settings: Settings, *, batch_window_s: float = 0.02, prefill_tokens: int = 8192):
        self.settings = settings
        self.batch_window_s = batch_window_s
        self.prefill_tokens = prefill_tokens
        self.failures = LoadFailures()
        self._lock = threading.Lock()
        self._waiting = 0
        self._workers: dict[str, _Worker] = {}

    def tokenizer(self, base: BaseModelInfo):
        return load_tokenizer(base.path)

    def check_model(self, model: ServableModel) -> None:
        self.failures.check(model.base.path)
        if model.adapter_path is not None:
            self.failures.check(model.adapter_path)
            check_adapter(model.adapter_path, model.base)

    def submit(self, request: GenerationRequest) -> GenerationStream:
        with self._lock:
            if self._waiting >= self.settings.max_queue:
                raise RateLimitError(
                    f"The server is busy: {self._waiting} chat requests are already waiting (limit "
                    f"TUNEGATE_MAX_QUEUE={self.settings.max_queue}). Retry shortly.",
                    code="rate_limit_exceeded",
                )
            self._waiting += 1
            key = str(request.model.base.path)
            worker = self._workers.get(key)
            if worker is None:
                worker = self._workers[key] = _Worker(self, request.model.base)
                worker.thread.start()
        stream = _Stream(asyncio.get_running_loop(), worker.scheduler.wake)
        stream.pending = _Pending(request, time.monotonic() + self.settings.request_timeout_seconds, stream=stream)
        worker.put(stream.pending)
        return stream

    def waiting_requests(self) -> int:
        """Requests queued and not yet decoding (the Batch API starts no new line while any wait)."""
        return self._waiting

    def _left_queue(self, p: Pending) -> None:
        with self._lock:
            self._waiting -= 1

    async def stop(self) -> None:
        workers = list(self._workers.values())
        for w in workers:
            w.stopping = True
            w.scheduler.wake()
        await asyncio.gather(*(asyncio.to_thread(w.thread.join, 30) for w in workers))
        self._workers.clear()

    def stats(self) -> dict:
        """Counters per base model (for tests, benchmarks and operators): steps, batch sizes, loads."""
        return {w.base.name: w.stats() for w in list(self._workers.values())}


@dataclass(eq=False)
class _Chunked:
    """A request whose prompt is prefilled a chunk per step: the K/V of its first `done` tokens so far."""

    seqs: list[_Running]
    done: int = 0
    layers: list | None = None


@dataclass(eq=False)
class _Pending(Pending):
    stream: _Stream | None = None


class _Worker:
    def __init__(self, engine: HFEngine, base: BaseModelInfo):
        self.engine = engine
        self.base = base
        self.settings = engine.settings
        self.scheduler = Scheduler(on_leave=engine._left_queue)
        self.stopping = False
        self.load_error: TunegateError | None = None
        self.lock = threading.Lock()  # guards load_error against a concurrent put
        self.running: list[_Running] = []
        self.prefilling: list[_Chunked] = []  # admitted, prompt still being read a chunk per step
        self.cache: BatchCache | None = None
        self.runner: ModelRunner | None = None
        self.output: OutputProcessor | None = None
        self.prefixes: PrefixCache | None = None
        self.counters = {"cancelled_sequences": 0, "timed_out_requests": 0, "chunked_prefills": 0}
        self.thread = threading.Thread(target=self._run, name=f"tunegate-engine-{base.name}", daemon=True)

    def stats(self) -> dict:
        out = dict(self.runner.stats) if self.runner else {}
        out.update(
            self.counters,
            running=len(self.running),
            waiting=len(self.scheduler.waiting()),
            sampling_s=self.output.sampling_s if self.output else 0.0,
            prefix_hits=self.prefixes.hits if self.prefixes else 0,
            prefix_tokens_saved=self.prefixes.tokens_saved if self.prefixes else 0,
        )
        return out

    def put(self, p: _Pending) -> None:
        with self.lock:
            if self.load_error is None:
                self.scheduler.add(p)
                return
        self.engine._left_queue(p)  # submitted while this worker was giving up: never queued
        self._fail(p, self.load_error)

    def _fail(self, p: _Pending, exc: TunegateError) -> None:
        if not p.failed:
            p.failed = True
            p.stream.put(exc)

    # --- thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.runner = ModelRunner(self.base, self.settings, self.engine.failures)
            self.output = OutputProcessor(self.runner.tokenizer, self.runner.eos)
            self.prefixes = PrefixCache(self.settings.prefix_cache_tokens)
        except Exception as exc:  # noqa: BLE001 - reported to every request of this base
            log.exception("could not load base model %s", self.base.name)
            error = ServerError(
                f"Base model `{self.base.name}` could not be loaded: {exc}. Its requests fail until its files change.",
                param="model",
                code="model_load_failed",
            )
            self.engine.failures.record(self.base.path, error)
            with self.lock:
                self.load_error = error
            with self.engine._lock:
                self.engine._workers.pop(str(self.base.path), None)
            for p in self.scheduler.drain():
                self._fail(p, error)
            return
        with torch.inference_mode():
            while not self.stopping:
                try:
                    self._step()
                except Exception:  # noqa: BLE001 - one bad batch must not kill the server
                    log.exception("serving step failed on %s", self.base.name)
                    for s in self.running + [s for g in self.prefilling for s in g.seqs]:
                        self._fail(s.p, ServerError("The model failed while generating; retry the request."))
                    self.running, self.cache, self.prefilling = [], None, []
        shutdown = ServerError("The server is shutting down; retry the request.", code="server_shutting_down")
        waiting = {s.p for g in self.prefilling for s in g.seqs} | set(self.scheduler.drain())
        for p in {s.p for s in self.running} | waiting:
            self._fail(p, shutdown)

    def _step(self) -> None:
        self._expire()
        if not self.running and not self.prefilling:
            if not self.scheduler.wait_for_work(0.5):
                return
            self.scheduler.gather(self.engine.batch_window_s, self.settings.max_batch_size)
        new = self._admit()
        if new:
            try:
                self._prefill(new)
            except Exception:
                for s in new:  # not in the batch yet: the step's handler would not see them
                    self._fail(s.p, ServerError("The model failed while reading the prompt; retry the request."))
                raise
            self._reap()  # choices that ended on their first token
        if self.prefilling:
            self._prefill_chunk()
            self._reap()
        if self.running:
            self._decode()
            self._reap()

    def _expire(self) -> None:
        now = time.monotonic()
        for p in self.scheduler.expire(now):
            self._timeout(p)
        for s in self.running + [s for g in self.prefilling for s in g.seqs]:
            if s.p.overdue(now):
                self._timeout(s.p)

    def _timeout(self, p: _Pending) -> None:
        t = self.settings.request_timeout_seconds
        self.counters["timed_out_requests"] += 1
        self._fail(
            p,
            GenerationTimeoutError(
                f"The request did not finish within {t:g} s (TUNEGATE_REQUEST_TIMEOUT_SECONDS); ask for fewer tokens "
                "or retry later.",
                code="request_timeout",
            ),
        )

    def _admit(self) -> list[_Running]:
        reading = [s for g in self.prefilling for s in g.seqs]
        room = self.settings.max_batch_size - len(self.running) - len(reading)
        if self.settings.prefill_group_rows:
            # A burst is prefilled a group per step: the first group's answers start while the rest is read.
            room = min(room, self.settings.prefill_group_rows)
        in_use = {s.slot for s in self.running + reading}
        admissions, failed = self.scheduler.admit(room, in_use, self.engine.prefill_tokens, self.runner.acquire_adapter)
        for p, exc in failed:
            self._fail(p, exc)
        return [self._sequence(a, i) for a in admissions for i in range(a.first, a.first + a.count)]

    def _sequence(self, a: Admission, index: int) -> _Running:
        p = a.request
        state = self.output.new_sequence(p.req.params, index, p.req.logits_processors)
        return _Running(p, p.stream, a.slot, len(p.req.prompt_ids), state)

    def _prefill(self, new: list[_Running]) -> None:
        # One row per request (its choices share the prompt), expanded to one row per choice after.
        # Prompts that begin like a cached one run only their rest, in a second forward.
        groups: dict[int, list[_Running]] = {}
        for s in new:
            groups.setdefault(id(s.p), []).append(s)
        plain, cached = [], []
        chunk = self.settings.prefill_chunk_tokens
        for seqs in groups.values():
            req = seqs[0].p.req
            hit = self.prefixes.lookup(req.model.adapter_path, req.prompt_ids)
            if self.running and chunk and len(req.prompt_ids) - (hit[0] if hit else 0) > chunk:
                # Chunked prefill: a long prompt is read a chunk per step, so running streams keep flowing.
                self.prefilling.append(_Chunked(seqs, *(hit or (0, None))))
                continue
            (cached if hit else plain).append((seqs, hit))
        if plain:
            logits, cache = self.runner.prefill(
                [g[0].p.req.prompt_ids for g, _ in plain], [g[0].slot for g, _ in plain]
            )
            self._join(plain, logits, cache)
        if cached:
            logits, cache = self.runner.prefill_cached(
                [hit for _, hit in cached], [g[0].p.req.prompt_ids for g, _ in cached], [g[0].slot for g, _ in cached]
            )
            self._join(cached, logits, cache)

    def _prefill_chunk(self) -> None:
        """Read the next chunk of the first prompt being prefilled; when it is whole, it joins the batch."""
        g = self.prefilling[0]
        req, slot = g.seqs[0].p.req, g.seqs[0].slot
        if g.seqs[0].p.gone:
            self.prefilling.pop(0)
            return
        end = min(len(req.prompt_ids), g.done + self.settings.prefill_chunk_tokens)
        try:
            if end < len(req.prompt_ids) or g.done == 0:
                prompt = req.prompt_ids[:end]
                logits, cache = (
                    self.runner.prefill_cached([(g.done, g.layers)], [prompt], [slot])
                    if g.done
                    else self.runner.prefill([prompt], [slot])
                )
                if end < len(req.prompt_ids):
                    g.done, g.layers = end, cache.row(0)
                    return
            else:
                logits, cache = self.runner.prefill_cached([(g.done, g.layers)], [req.prompt_ids], [slot])
        except Exception:
            self.prefilling.pop(0)
            for s in g.seqs:
                self._fail(s.p, ServerError("The model failed while reading the prompt; retry the request."))
            raise
        self.prefilling.pop(0)
        self.counters["chunked_prefills"] += 1
        self._join([(g.seqs, None)], logits, cache)

    def _join(self, groups: list, logits: torch.Tensor, cache: BatchCache) -> None:
        """Prefilled requests join the batch: their prompts' K/V are remembered, their first tokens chosen."""
        for j, (seqs, _) in enumerate(groups):
            req = seqs[0].p.req
            self.prefixes.store(req.model.adapter_path, req.prompt_ids, lambda j=j: cache.row(j))
        rows = [j for j, (seqs, _) in enumerate(groups) for _ in seqs]
        flat = [s for seqs, _ in groups for s in seqs]
        cache.expand(rows)
        self._emit(flat, logits.index_select(0, torch.tensor(rows, dtype=torch.long)))
        if self.cache is None:
            self.cache = cache
        else:
            self.cache.merge(cache)
        self.running = self.running + flat

    def _decode(self) -> None:
        live = self.running
        logits = self.runner.decode(
            [s.state.last for s in live], [s.pos for s in live], [s.slot for s in live], self.cache
        )
        for s in live:
            s.pos += 1
        self._emit(live, logits)

    def _emit(self, seqs: list[_Running], logits: torch.Tensor) -> None:
        outputs = self.output.process([s.state for s in seqs], logits)
        for s, out in zip(seqs, outputs):
            if s.p.gone:
                continue
            if out is not None:
                s.stream.put(out)
            if s.state.finish_reason:
                s.p.finished += 1
                if s.p.finished == s.p.req.n:
                    s.stream.put(None)

    def _reap(self) -> None:
        keep = [i for i, s in enumerate(self.running) if not (s.state.finish_reason or s.p.gone)]
        self.counters["cancelled_sequences"] += sum(1 for s in self.running if s.p.cancelled)
        if len(keep) == len(self.running):
            return
        if not keep:
            self.running, self.cache = [], None
            return
        self.cache.keep(keep)
        self.running = [self.running[i] for i in keep]
