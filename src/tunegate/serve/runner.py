"""The model runner: one loaded base model with its adapter slots, and the two forwards of serving.

Owns loading a base model (once, shared by every adapter), acquiring adapter slots, the prefill of
new prompts (left-padded, one row per prompt) and the decode step of a whole mixed-adapter batch.
Also owns `LoadFailures`: a model or adapter that failed to load is remembered with its files'
sizes and modification times, so its requests fail at once with the same error instead of
retrying the load in a loop, and a repaired file is tried again. Does not own which sequences run
(`serve/scheduler.py`), the cache row surgery (`serve/kv_cache.py`) or token choice
(`serve/output.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from tunegate.catalog import BaseModelInfo, load_pretrained, load_tokenizer
from tunegate.errors import ServerError, TunegateError
from tunegate.serve.kv_cache import BatchCache
from tunegate.serve.lora import AdapterSlots
from tunegate.settings import Settings
from tunegate.threads import use_engine_threads

log = logging.getLogger("tunegate.serve")


def _signature(path: Path) -> tuple:
    """What identifies the bytes of a model folder without reading them: (name, size, mtime) of its files."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f.relative_to(path)) if path.is_dir() else f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class LoadFailures:
    """Models and adapters that failed to load, until their files change. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[Path, tuple[tuple, TunegateError]] = {}

    def check(self, path: Path) -> None:
        """Raise the remembered error if `path` failed to load and its files have not changed since."""
        with self._lock:
            hit = self._failed.get(path)
        if hit is None:
            return
        signature, error = hit
        if _signature(path) == signature:
            raise error
        with self._lock:
            self._failed.pop(path, None)  # repaired (or replaced): the next load tries again

    def record(self, path: Path, error: TunegateError) -> None:
        with self._lock:
            self._failed[path] = (_signature(path), error)


def adapter_load_error(path: Path, exc: BaseException) -> TunegateError:
    if isinstance(exc, TunegateError):
        return exc
    return ServerError(
        f"The adapter at {path} could not be loaded ({type(exc).__name__}: {exc}). Its files are damaged or "
        "incomplete; requests for this model fail until they are replaced (other models are unaffected).",
        param="model",
        code="model_load_failed",
    )


class ModelRunner:
    """Prefill and decode on one base model (see module docstring). Used by one worker thread."""

    def __init__(self, base: BaseModelInfo, settings: Settings, failures: LoadFailures):
        from transformers import AutoModelForCausalLM

        self.base = base
        self.failures = failures
        # This (the engine's worker) thread uses the cores; no other long-lived thread may (threads.py).
        use_engine_threads(settings.torch_threads)
        self.tokenizer = load_tokenizer(base.path)
        # Loads are serialised by the catalog (two at once break each other); serving runs in parallel.
        self.model = load_pretrained(AutoModelForCausalLM, base.path, dtype=torch.float32)
        self.model.eval()
        self.adapters = AdapterSlots(self.model, settings.adapter_cache_size, base)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos.add(self.tokenizer.eos_token_id)
        eot = base.features.eot_token_id if base.features else None
        if eot is not None:  # the template's end of turn (Gemma's <end_of_turn>, Phi 3's <|end|>) ends an answer
            self.eos.add(eot)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.stats = {
            "prefills": 0,
            "decode_steps": 0,
            "max_batch": 0,
            "mixed_adapter_steps": 0,
            "adapter_loads": 0,
            "adapter_load_failures": 0,
            "forward_s": 0.0,
            "torch_threads": torch.get_num_threads(),  # read in the engine's worker thread, after use_engine_threads
        }

    def acquire_adapter(self, path: Path | None, in_use: set[int]) -> int | None:
        """The adapter slot for `path` (0 = none), loading it if needed; None when every slot is busy.
        A load that fails raises a `TunegateError` and is remembered until the files change."""
        if path is not None:
            self.failures.check(path)
        loads = self.adapters.loads
        try:
            return self.adapters.acquire(path, in_use)
        except Exception as exc:  # noqa: BLE001 - any damage to the files (safetensors, JSON, shapes)
            error = adapter_load_error(path, exc)
            log.error("could not load adapter %s: %s", path, error.message)
            self.stats["adapter_load_failures"] += 1
            self.failures.record(path, error)
            raise error from None
        finally:
            self.stats["adapter_loads"] += self.adapters.loads - loads

    def prefill(self, prompts: list[list[int]], slots: list[int]) -> tuple[torch.Tensor, BatchCache]:
        """Run `prompts` (one adapter slot each); returns (last-position logits [P, vocab], their cache)."""
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, length - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, length - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.adapters.set_batch(slots)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        self.stats["prefills"] += 1
        return out.logits[:, -1, :], BatchCache(out.past_key_values, mask)

    def prefill_cached(
        self, prefixes: list[tuple[int, list]], prompts: list[list[int]], slots: list[int]
    ) -> tuple[torch.Tensor, BatchCache]:
        """Like `prefill`, for prompts whose first p tokens' K/V are known (`prefixes[i] = (p, layers)`):
        only the rest of each prompt runs, attending to its prefix. Exact: the same K/V, positions and mask."""
        lengths = [p for p, _ in prefixes]
        cache = BatchCache.from_prefixes([layers for _, layers in prefixes], lengths)
        rests = [prompt[p:] for prompt, p in zip(prompts, lengths)]
        width = max(len(r) for r in rests)
        ids = torch.full((len(rests), width), self.pad_id, dtype=torch.long)
        rest_mask = torch.zeros((len(rests), width), dtype=torch.long)
        positions = torch.zeros((len(rests), width), dtype=torch.long)
        for i, (r, p) in enumerate(zip(rests, lengths)):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            rest_mask[i, width - len(r) :] = 1
            positions[i, width - len(r) :] = torch.arange(p, p + len(r))
        cache.mask = torch.cat([cache.mask, rest_mask], dim=1)
        self.adapters.set_batch(slots)
        out = self.model(
            input_ids=ids,
            attention_mask=cache.mask,
            position_ids=positions,
            past_key_values=cache.past,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats["prefills"] += 1
        return out.logits[:, -1, :], cache

    def decode(self, last: list[int], positions: list[int], slots: list[int], cache: BatchCache) -> torch.Tensor:
        """One token per row of `cache` (its last token at its position); returns logits [B, vocab]."""
        ids = torch.tensor([[t] for t in last], dtype=torch.long)
        pos = torch.tensor([[p] for p in positions], dtype=torch.long)
        mask = cache.step_mask()
        self.adapters.set_batch(slots)
        start = time.perf_counter()
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache.past, use_cache=True
        )
        self.stats["forward_s"] += time.perf_counter() - start
        self.stats["decode_steps"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(last))
        self.stats["mixed_adapter_steps"] += len(set(slots)) > 1
        return out.logits[:, -1, :]
