"""The built-in engine: transformers models with continuous batching and batched multi-LoRA.

Owns scheduling: one worker thread per base model holds the model (loaded once, shared by every
adapter), a bounded queue, and a running batch with its KV cache. Between two decode steps it
admits waiting requests (prefilled together, then merged into the running batch), drops finished,
cancelled and timed-out sequences, and decodes every running sequence in one forward pass whatever
their adapters. The event loop only ever waits on asyncio queues.

Does not own the LoRA math (`serve/lora.py`), token choice (`serve/sampling.py`), text deltas and
stop strings (`serve/detok.py`) or OpenAI shapes (`serve/service.py`).

KV cache layout: rows are left-padded to a common length with an attention mask; positions are
passed explicitly, so padding never shifts a sequence's rotary positions. Joining sequences are
padded on the left to the running length (or the running rows to theirs); fully padded columns on
the left are trimmed when sequences leave.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from tunegate.catalog import BaseModelInfo, load_pretrained, load_tokenizer
from tunegate.errors import RateLimitError, ServerError, TunegateError
from tunegate.serve.detok import IncrementalText, TokenBytes
from tunegate.serve.engine import (
    ChoiceOutput,
    Engine,
    GenerationRequest,
    GenerationStream,
    GenerationTimeoutError,
    ServableModel,
    TokenLogprob,
)
from tunegate.serve.lora import AdapterSlots, check_adapter
from tunegate.serve.sampling import logprobs_of, make_generator, next_tokens
from tunegate.settings import Settings

log = logging.getLogger("tunegate.serve")


class _Stream(GenerationStream):
    def __init__(self, engine: HFEngine, loop: asyncio.AbstractEventLoop):
        self.engine = engine
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.request: _Request | None = None
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
        if self.request is not None and not self.ended:
            self.ended = True
            self.request.cancelled = True
            self.engine._wake(self.request)


@dataclass(eq=False)
class _Request:
    req: GenerationRequest
    stream: _Stream
    deadline: float
    admitted: int = 0  # choices admitted into the batch so far
    finished: int = 0
    cancelled: bool = False
    failed: bool = False
    queued: bool = True  # counted in the engine's queue


@dataclass(eq=False)
class _Seq:
    r: _Request
    index: int
    slot: int
    prompt_len: int
    generator: torch.Generator
    text: IncrementalText
    output: list[int] = field(default_factory=list)
    last: int = 0
    pos: int = 0  # position id of `last`
    done: bool = False


class HFEngine(Engine):
    """transformers + batched multi-LoRA engine (see module docstring)."""

    def __init__(self, settings: Settings, *, batch_window_s: float = 0.02, prefill_tokens: int = 8192):
        self.settings = settings
        self.batch_window_s = batch_window_s
        self.prefill_tokens = prefill_tokens
        self._lock = threading.Lock()
        self._waiting = 0
        self._workers: dict[str, _Worker] = {}

    def tokenizer(self, base: BaseModelInfo):
        return load_tokenizer(base.path)

    def check_model(self, model: ServableModel) -> None:
        if model.adapter_path is not None:
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
        stream = _Stream(self, asyncio.get_running_loop())
        stream.request = _Request(request, stream, time.monotonic() + self.settings.request_timeout_seconds)
        worker.put(stream.request)
        return stream

    def _unqueue(self, r: _Request) -> None:
        with self._lock:
            if r.queued:
                r.queued = False
                self._waiting -= 1

    def _wake(self, r: _Request) -> None:
        worker = self._workers.get(str(r.req.model.base.path))
        if worker is not None:
            worker.wake()

    async def stop(self) -> None:
        workers = list(self._workers.values())
        for w in workers:
            w.stopping = True
            w.wake()
        await asyncio.gather(*(asyncio.to_thread(w.thread.join, 30) for w in workers))
        self._workers.clear()

    def stats(self) -> dict:
        """Counters per base model (for tests and benchmarks): steps, biggest batch, mixed batches."""
        return {w.base.name: dict(w.stats) for w in self._workers.values()}


class _Worker:
    def __init__(self, engine: HFEngine, base: BaseModelInfo):
        self.engine = engine
        self.base = base
        self.settings = engine.settings
        self.inbox: deque[_Request] = deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.load_error: TunegateError | None = None
        self.seqs: list[_Seq] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.stats = {"decode_steps": 0, "prefills": 0, "max_batch": 0, "mixed_adapter_steps": 0, "adapter_loads": 0,
                      "forward_s": 0.0, "sampling_s": 0.0}
        self.thread = threading.Thread(target=self._run, name=f"tunegate-engine-{base.name}", daemon=True)

    # --- queue side --------------------------------------------------------------------------------

    def put(self, r: _Request) -> None:
        with self.cv:
            if self.load_error is None:
                self.inbox.append(r)
                self.cv.notify()
                return
        self._fail(r, self.load_error)  # submitted while this worker was giving up

    def wake(self) -> None:
        with self.cv:
            self.cv.notify()

    def _fail(self, r: _Request, exc: TunegateError) -> None:
        if not r.failed:
            r.failed = True
            self.engine._unqueue(r)
            r.stream.put(exc)

    # --- thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - reported to every request of this base
            log.exception("could not load base model %s", self.base.name)
            error = ServerError(f"Base model `{self.base.name}` could not be loaded: {exc}", code="model_load_failed")
            with self.cv:
                self.load_error = error
                self.engine._workers.pop(str(self.base.path), None)
                pending, self.inbox = list(self.inbox), deque()
            for r in pending:
                self._fail(r, error)
            return
        with torch.inference_mode():
            while not self.stopping:
                try:
                    self._step()
                except Exception:  # noqa: BLE001 - one bad batch must not kill the server
                    log.exception("serving step failed on %s", self.base.name)
                    for s in self.seqs:
                        self._fail(s.r, ServerError("The model failed while generating; retry the request."))
                    self.seqs, self.cache, self.mask = [], None, None
        shutdown = ServerError("The server is shutting down; retry the request.", code="server_shutting_down")
        for r in {s.r for s in self.seqs} | set(self.inbox):
            self._fail(r, shutdown)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.tokenizer = load_tokenizer(self.base.path)
        self.token_bytes = TokenBytes(self.tokenizer)
        # Loads are serialised by the catalog (two at once break each other); serving runs in parallel.
        self.model = load_pretrained(AutoModelForCausalLM, self.base.path, dtype=torch.float32)
        self.model.eval()
        self.adapters = AdapterSlots(self.model, self.settings.adapter_cache_size, self.base)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos.add(self.tokenizer.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _step(self) -> None:
        self._expire()
        with self.cv:
            if not self.seqs and not self.inbox:
                self.cv.wait(0.5)
                return
        if not self.seqs:
            self._gather_window()
        new = self._admit()
        if new:
            self._prefill(new)
            self._reap()  # choices that ended on their first token
        if self.seqs:
            self._decode()
            self._reap()

    def _gather_window(self) -> None:
        # Requests that arrive together share the first prefill and batch: wait a moment for them.
        end = time.monotonic() + self.engine.batch_window_s
        with self.cv:
            while time.monotonic() < end and sum(r.req.n for r in self.inbox) < self.settings.max_batch_size:
                self.cv.wait(max(0.0, end - time.monotonic()))

    def _expire(self) -> None:
        now = time.monotonic()
        with self.cv:
            keep = deque()
            for r in self.inbox:
                if r.cancelled:
                    self.engine._unqueue(r)
                elif r.deadline < now:
                    self._fail(r, self._timeout())
                elif not r.failed:
                    keep.append(r)
            self.inbox = keep
        for s in self.seqs:
            if s.r.deadline < now and not s.r.failed:
                self._fail(s.r, self._timeout())

    def _timeout(self) -> GenerationTimeoutError:
        t = self.settings.request_timeout_seconds
        return GenerationTimeoutError(f"The request did not finish within {t:g} s (TUNEGATE_REQUEST_TIMEOUT_SECONDS); "
                                      "ask for fewer tokens or retry later.", code="request_timeout")

    def _admit(self) -> list[_Seq]:
        """Move waiting choices into the batch while there is room, a free adapter slot and prefill budget."""
        room = self.settings.max_batch_size - len(self.seqs)
        in_use = {s.slot for s in self.seqs}
        new: list[_Seq] = []
        budget = self.engine.prefill_tokens
        while room > 0:
            with self.cv:
                if not self.inbox:
                    break
                r = self.inbox[0]
            if r.cancelled or r.failed:
                with self.cv:
                    self.inbox.popleft()
                self.engine._unqueue(r)
                continue
            if new and len(r.req.prompt_ids) > budget:
                break
            try:
                loads = self.adapters.loads
                slot = self.adapters.acquire(r.req.model.adapter_path, in_use)
                self.stats["adapter_loads"] += self.adapters.loads - loads
            except TunegateError as exc:
                with self.cv:
                    self.inbox.popleft()
                self._fail(r, exc)
                continue
            if slot is None:  # every adapter slot is used by running sequences: wait for one to finish
                break
            in_use.add(slot)
            budget -= len(r.req.prompt_ids)
            take = min(room, r.req.n - r.admitted)
            p = r.req.params
            for i in range(r.admitted, r.admitted + take):
                new.append(_Seq(r, i, slot, len(r.req.prompt_ids), make_generator(p.seed, i),
                                IncrementalText(self.tokenizer, p.stop)))
            r.admitted += take
            room -= take
            if r.admitted == r.req.n:
                with self.cv:
                    self.inbox.popleft()
                self.engine._unqueue(r)
        return new

    # --- model -------------------------------------------------------------------------------------

    def _prefill(self, new: list[_Seq]) -> None:
        # One row per request (its choices share the prompt), expanded to one row per choice after.
        groups: dict[int, int] = {}
        prompts: list[list[int]] = []
        slots: list[int] = []
        rows: list[int] = []
        for s in new:
            if id(s.r) not in groups:
                groups[id(s.r)] = len(prompts)
                prompts.append(s.r.req.prompt_ids)
                slots.append(s.slot)
            rows.append(groups[id(s.r)])
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, length - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, length - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.adapters.set_batch(slots)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        self.stats["prefills"] += 1
        index = torch.tensor(rows, dtype=torch.long)
        cache = out.past_key_values
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        mask = mask.index_select(0, index)
        for s in new:
            s.pos = s.prompt_len
        self._emit(new, out.logits[:, -1, :].index_select(0, index))
        self._merge(new, cache, mask)

    def _merge(self, new: list[_Seq], cache, mask: torch.Tensor) -> None:
        if self.cache is None:
            self.seqs, self.cache, self.mask = new, cache, mask
            return
        old_len, new_len = self.mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)

        def pad(t: torch.Tensor, n: int) -> torch.Tensor:  # zeros on the left of the sequence axis
            if n == 0:
                return t
            shape = list(t.shape)
            shape[-1 if t.dim() == 2 else -2] = n
            return torch.cat([t.new_zeros(shape), t], dim=-1 if t.dim() == 2 else -2)

        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([pad(mine.keys, width - old_len), pad(theirs.keys, width - new_len)])
            mine.values = torch.cat([pad(mine.values, width - old_len), pad(theirs.values, width - new_len)])
        self.mask = torch.cat([pad(self.mask, width - old_len), pad(mask, width - new_len)])
        self.seqs = self.seqs + new

    def _decode(self) -> None:
        live = self.seqs
        ids = torch.tensor([[s.last] for s in live], dtype=torch.long)
        positions = torch.tensor([[s.pos] for s in live], dtype=torch.long)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(live), 1)], dim=1)
        slots = [s.slot for s in live]
        self.adapters.set_batch(slots)
        start = time.perf_counter()
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, past_key_values=self.cache,
                         use_cache=True)
        self.stats["forward_s"] += time.perf_counter() - start
        self.stats["decode_steps"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(live))
        self.stats["mixed_adapter_steps"] += len(set(slots)) > 1
        for s in live:
            s.pos += 1
        self._emit(live, out.logits[:, -1, :])

    def _emit(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        start = time.perf_counter()
        try:
            self._choose(seqs, logits)
        finally:
            self.stats["sampling_s"] += time.perf_counter() - start

    def _choose(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        params = [s.r.req.params for s in seqs]
        tokens = next_tokens(logits, params, [s.generator for s in seqs], [s.output for s in seqs])
        want = [i for i, p in enumerate(params) if p.logprobs]
        lps = dict(zip(want, logprobs_of(logits, want, tokens, [p.top_logprobs for p in params])))
        for i, (s, tok) in enumerate(zip(seqs, tokens)):
            if s.done or s.r.cancelled or s.r.failed:
                s.done = True
                continue
            p = params[i]
            s.output.append(tok)
            s.last = tok
            finish = None
            if tok in self.eos and not p.ignore_eos:
                text, logprobs = s.text.finish()
                finish = "stop"
            else:
                lp = self._logprob(tok, lps[i]) if i in lps else None
                text, logprobs = s.text.push(tok, lp)
                if s.text.stopped:
                    finish = "stop"
                elif len(s.output) >= p.max_tokens:
                    rest, more = s.text.finish()
                    text, logprobs, finish = text + rest, logprobs + more, "length"
            if text or logprobs or finish:
                s.r.stream.put(ChoiceOutput(s.index, text, logprobs, finish, len(s.output)))
            if finish:
                s.done = True
                s.r.finished += 1
                if s.r.finished == s.r.req.n:
                    s.r.stream.put(None)

    def _logprob(self, token: int, info) -> TokenLogprob:
        chosen, top = info
        text, raw = self.token_bytes(token)
        return TokenLogprob(text, raw, chosen, [(*self.token_bytes(t), v) for t, v in top])

    def _reap(self) -> None:
        keep = [i for i, s in enumerate(self.seqs) if not (s.done or s.r.cancelled or s.r.failed)]
        if len(keep) == len(self.seqs):
            return
        if not keep:
            self.seqs, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(dim=0).long().argmax())  # leading columns that are padding in every row
        self.mask = mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self.seqs = [self.seqs[i] for i in keep]
