"""Greedy, batched, bounded-length generation for the safety gate (inside the training worker).

Owns loading the base model once with the fine-tuned adapter on top — once for all the
after-training steps (`shared_generator`: the gate, then the regression check in evals/, each with
its own generation settings) — answering a list of conversations with either, and caching the base
model's answers on disk, which are the same for every job on that base model, suite and generation
settings (`python -m tunegate.evals.prepare` fills the cache for the default model at set-up).

Cost (the gate should take a small share of training time): the base answers to fixed prompts
come from the cache; the fine-tuned answers are decoded by one greedy loop per batch with a KV
cache, prompts grouped by their common start (chat template and system prompt: a batch reads it
once and copies its K/V to every row, about 60% of the after-training prompt tokens) and sorted by
length so a batch pads little, and a row leaves its batch the step its answer is final — it
ended, reached `max_new_tokens`, or, for the gate (`stop_at_refusal`), it opens with a refusal
after `first_round_tokens` (the judge counts a refusal as not harmful whatever follows it) — so a
batch's later steps cost only the answers still being written (transformers' `generate` computes
every row until the last one ends); the batches are decoded side by side, one per core, each on
one intra-op thread (`streams`: rows of a few dozen tokens split over two threads wait on each other
more than they gain). A later step `plan`s its prompts so the first `tuned` call answers them in the same batches (the regression check's after the gate's: one
pass, not two), each row under its own step's settings. Optionally (`merge`) the fine-tuned pass
runs with the adapter merged into the weights and the base pass restores the exact base weights
(saved at the merge, not un-merged by subtraction, which would round differently). Greedy decoding
makes the answers — and so the gate's decision — deterministic for a given model and suite; they
equal one plain `generate` per prompt (tests/unit/test_gate_generation.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from tunegate.catalog import get_base_model, load_pretrained
from tunegate.catalog.template import render
from tunegate.settings import Settings
from tunegate.threads import intra_op_threads

# Bumped when generation changes in a way that changes answers: old cached base answers are not reused.
GENERATION_VERSION = 3


def _one_matmul(head, args: tuple) -> tuple:
    """The LM head's input made contiguous. A batch pass keeps only the last position's hidden states,
    a strided [B, 1, H] view; when no weight needs a gradient (a frozen PEFT model), torch's matmul then
    runs one vector product per row against the whole vocabulary over an expanded weight (~0.3 s for 40
    rows on one thread) instead of one matrix product (what a model with trainable weights gets)."""
    return (args[0].contiguous(), *args[1:])


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that shapes an answer; part of the base-answer cache key."""

    max_new_tokens: int = 40
    first_round_tokens: int = 16
    batch_size: int = 64
    streams: int = 0
    """Batches decoded side by side, each on one intra-op thread; 0: as many as the process has
    intra-op threads (the worker's cores). See `AdapterGenerator._decode`."""
    stop_at_refusal: bool = False
    """The gate's: an answer that opens with a refusal is final after the first round."""
    version: int = GENERATION_VERSION


GATE_GENERATION = GenerationSettings(stop_at_refusal=True)


def _settings(max_new_tokens: int, gen: GenerationSettings | None) -> GenerationSettings:
    gen = gen or GenerationSettings()
    return GenerationSettings(
        max_new_tokens=max_new_tokens,
        first_round_tokens=min(gen.first_round_tokens, max_new_tokens),
        batch_size=gen.batch_size,
        streams=gen.streams,
        stop_at_refusal=gen.stop_at_refusal,
    )


class AdapterGenerator:
    """The base model with one fine-tuned adapter on top (or none: `adapter_dir=None`, base answers
    only, as the set-up step computes them). With `merge`, `tuned` folds the adapter into the weights
    for its pass (no LoRA matmuls per step) and `base` restores the exact base weights first; off by
    default: on this CPU it measured no gain at batch 32 (the rank-16 LoRA matmuls are a small share
    of a step) and it holds a copy of the base weights."""

    def __init__(
        self,
        settings: Settings,
        base_name: str,
        adapter_dir: Path | None,
        max_new_tokens: int,
        generation: GenerationSettings | None = None,
        merge: bool = False,
    ):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.info = get_base_model(base_name, settings)
        self.generation = _settings(max_new_tokens, generation)
        # Its own instance (not the catalog's shared one): padding is set on it below.
        self.tokenizer = load_pretrained(AutoTokenizer, self.info.path)
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base = load_pretrained(AutoModelForCausalLM, self.info.path, dtype=torch.float32).eval()
        self.adapter_dir = adapter_dir
        self.model = PeftModel.from_pretrained(base, str(adapter_dir)).eval() if adapter_dir is not None else base
        self.model.get_output_embeddings().register_forward_pre_hook(_one_matmul)
        self.merge = merge and adapter_dir is not None
        self._state = "base"  # or "merged": the adapter is folded into the weights
        self._saved: dict = {}  # the base weights the merge overwrote, restored exactly for `base`
        self._shared: AdapterGenerator | None = None  # a `configured` view's owner of the model
        self._planned: list[tuple[GenerationSettings, list[list[dict]]]] = []  # see `plan`
        self._answers: dict[str, str] = {}  # fine-tuned answers by settings and conversation
        self.stop_ids = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}
        self.generated_tokens = 0  # new tokens computed (padding rows included): what the gate's time goes to
        self.prompt_tokens = 0  # prompt tokens read (padding included; a batch's shared start once)
        # Token forwards (prompt tokens read and answer tokens computed) per generation settings: a
        # pass shared by the gate and the regression check is apportioned by them (`own_share`).
        self.work: defaultdict[GenerationSettings, float] = defaultdict(float)
        self.own_share = 1.0  # this view's share of the work of its last `tuned` pass
        self._count_lock = threading.Lock()  # batches may decode in parallel threads (`streams`)

    def configured(self, max_new_tokens: int, generation: GenerationSettings | None = None) -> AdapterGenerator:
        """The same loaded model with other generation settings (the gate's and the regression
        check's differ): one model load for every after-training step."""
        view = copy.copy(self)
        view.generation = _settings(max_new_tokens, generation)
        view._shared = self
        return view

    def _owner(self) -> AdapterGenerator:
        return self._shared or self

    def _use(self, state: str) -> None:
        """Put the weights in `state` ("merged" or "base"), on the object that owns the model."""
        o = self._owner()
        if o._state == state:
            return
        import torch

        layers = [m for m in o.model.modules() if hasattr(m, "merge") and hasattr(m, "base_layer")]
        with torch.no_grad():
            if state == "merged":
                if not o._saved:
                    o._saved = {id(m): m.base_layer.weight.detach().clone() for m in layers}
                o.model.merge_adapter()
            else:
                for m in layers:  # exact: a merge undone by subtraction would round differently
                    m.base_layer.weight.copy_(o._saved[id(m)])
                    m.merged_adapters = []
        o._state = state

    def _final(self, answer: list[int], rule: GenerationSettings) -> bool:
        """Whether a row's answer is complete: it ended, reached its length, or (the gate's rule) it
        opens with a refusal after `first_round_tokens` (the judge counts a refusal as not harmful
        whatever follows it)."""
        from tunegate.safety.refusal import refusal_score

        if answer[-1] in self.stop_ids or len(answer) >= rule.max_new_tokens:
            return True
        if rule.stop_at_refusal and len(answer) == rule.first_round_tokens:
            text = self.tokenizer.decode(answer, skip_special_tokens=True).strip()  # (an empty start goes on)
            return bool(text) and refusal_score(text).refused
        return False

    def _decode_batch(self, rows: list[list[int]], rules: list[GenerationSettings]) -> list[list[int]]:
        """Greedy continuation of each token row (left-padded into one batch, one KV cache): the new
        ids, up to and including the end token. A row leaves the batch the step its answer is final
        (its cache rows dropped), so the batch's later steps cost only what is still being written —
        the cost that `generate` pays for every row until the last one ends."""
        import torch
        from transformers import DynamicCache

        pad = self.tokenizer.pad_token_id
        shared = shared_prefix(rows) if len(rows) > 1 else 0
        rest = [r[shared:] for r in rows]
        width = max(len(r) for r in rest)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest])
        # Left padding sits between the shared prefix and each row's own tokens: masked out, and each
        # row's positions count on from the prefix as if the padding were not there.
        mask = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rest])
        positions = ((mask.cumsum(-1) - 1).clamp(min=0))[:, shared:]
        cache = DynamicCache(config=self.model.config)
        live = list(range(len(rows)))  # the batch's rows, by their index in `rows`
        answers: list[list[int]] = [[] for _ in rows]
        with torch.inference_mode():
            if shared:
                # The prompt's common start (chat template, system prompt) read once, its K/V copied to every row.
                self.model(
                    input_ids=torch.tensor([rows[0][:shared]]), past_key_values=cache, use_cache=True, logits_to_keep=1
                )
                cache.batch_repeat_interleave(len(rows))
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            step_pos = positions[:, -1:] + 1
            with self._owner()._count_lock:
                self._owner().prompt_tokens += shared + ids.numel()
                for rule in rules:  # each row its padded width and an equal part of the shared start
                    self._owner().work[rule] += width + shared / len(rows)
            while True:
                tokens = out.logits[:, -1].argmax(-1).tolist()
                owner = self._owner()
                with owner._count_lock:
                    owner.generated_tokens += len(live)
                    for i in live:
                        owner.work[rules[i]] += 1
                keep = []
                for b, (i, t) in enumerate(zip(live, tokens)):
                    answers[i].append(t)
                    if not self._final(answers[i], rules[i]):
                        keep.append(b)
                if not keep:
                    return answers
                if len(keep) < len(live):
                    idx = torch.tensor(keep)
                    cache.batch_select_indices(idx)
                    mask, step_pos = mask[idx], step_pos[idx]
                    live = [live[b] for b in keep]
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                out = self.model(
                    input_ids=torch.tensor([[answers[i][-1]] for i in live]),
                    attention_mask=mask,
                    position_ids=step_pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                step_pos = step_pos + 1

    def _decode(self, prompts: list[list[int]], rules: list[GenerationSettings]) -> list[list[int]]:
        """Each prompt's answer, prompts grouped by their common start (`prefix_groups`) and sorted by
        length into batches of at most `batch_size` (less padding), decoded side by side by `streams`
        threads, each batch's forward passes on one intra-op thread. Why: a decoding step is a few
        dozen rows, and splitting matmuls that small over two threads costs hand-offs and waits for
        the slower thread (more so on a busy machine), while two batches side by side keep both
        cores on whole matmuls. A batch's answers do not
        depend on which thread ran it (one intra-op thread each, whatever the machine)."""
        import math

        import torch

        out: list[list[int]] = [[] for _ in prompts]
        streams = self.generation.streams or torch.get_num_threads()
        size = min(self.generation.batch_size, max(1, math.ceil(len(prompts) / streams)))  # a batch per stream at least
        chunks = []
        for group in prefix_groups(prompts):  # a batch within one group reads the group's prompt start once
            k = math.ceil(len(group) / size)
            step = math.ceil(len(group) / k)  # balanced: 70 rows at 64 a batch make 35 + 35, not 64 + 6
            chunks += [group[start : start + step] for start in range(0, len(group), step)]

        def run(chunk: list[int]) -> None:
            for i, new in zip(chunk, self._decode_batch([prompts[i] for i in chunk], [rules[i] for i in chunk])):
                out[i] = new

        # One thread per batch, set in every thread before its first batch and undone only after the
        # last one (in the calling thread): the count stays 1 throughout whether torch's setting is
        # per thread or, for a BLAS library, per process.
        with intra_op_threads(1 if streams > 1 else None):
            if streams <= 1 or len(chunks) <= 1:
                for chunk in chunks:
                    run(chunk)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(
                    min(streams, len(chunks)), initializer=torch.set_num_threads, initargs=(1,)
                ) as pool:
                    list(pool.map(run, chunks))  # re-raises a batch's error here
        return out

    def _answer(self, requests: list[tuple[GenerationSettings, list[list[dict]]]]) -> list[list[str]]:
        """One decoding pass for several requests, each row under its own request's settings (the
        gate's and the regression check's answers share batches): the answers, per request."""
        prompts: list[list[int]] = []
        rules: list[GenerationSettings] = []
        for rule, conversations in requests:
            for c in conversations:
                text = render(self.tokenizer, c, add_generation_prompt=True)
                prompts.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                rules.append(rule)
        texts = [self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in self._decode(prompts, rules)]
        out, at = [], 0
        for _, conversations in requests:
            out.append(texts[at : at + len(conversations)])
            at += len(conversations)
        return out

    def _generate(self, conversations: list[list[dict]]) -> list[str]:
        return self._answer([(self.generation, conversations)])[0]

    def plan(self, conversations: list[list[dict]]) -> None:
        """Have the fine-tuned answers to these conversations (under this view's settings) generated
        in the same pass as the next `tuned` call on this model, by any view, and kept for this
        view's own `tuned` call later: a later after-training step plans its prompts so the first
        step's pass decodes them in the same batches, not in a second pass of its own."""
        self._owner()._planned.append((self.generation, conversations))

    @property
    def planned(self) -> int:
        """How many planned conversations the next `tuned` call will answer besides its own."""
        return sum(len(c) for _, c in self._owner()._planned)

    def tuned(self, conversations: list[list[dict]]) -> list[str]:
        """The fine-tuned model's answers; with any planned conversations generated in the same pass.
        Answers are kept per settings and conversation for the life of the loaded model."""
        if self.adapter_dir is None:
            raise ValueError("this generator has no fine-tuned adapter: it answers as the base model only")
        o = self._owner()

        def key(g: GenerationSettings, c: list[dict]) -> str:
            return json.dumps([asdict(g), c], sort_keys=True)

        wanted = [(self.generation, conversations), *o._planned]
        o._planned = []
        todo: list[tuple[GenerationSettings, list[list[dict]]]] = []
        for g, convs in wanted:
            fresh = list({key(g, c): c for c in convs if key(g, c) not in o._answers}.values())  # once each
            if fresh:
                todo.append((g, fresh))
        if todo:
            if self.merge:
                self._use("merged")
            before = dict(o.work)
            for (g, convs), answers in zip(todo, self._answer(todo)):
                o._answers.update((key(g, c), a) for c, a in zip(convs, answers))
            done = {rule: n - before.get(rule, 0.0) for rule, n in o.work.items()}
            self.own_share = done.get(self.generation, 0.0) / max(sum(done.values()), 1.0)
        return [o._answers[key(self.generation, c)] for c in conversations]

    def base(self, conversations: list[list[dict]]) -> list[str]:
        if self.adapter_dir is None:
            return self._generate(conversations)
        self._use("base")
        with self.model.disable_adapter():
            return self._generate(conversations)

    def cache_key(self, conversations: list[list[dict]] | None = None) -> str:
        """Base model (name, folder, chat template) and generation settings, plus the conversations when given."""
        parts: list = [self.info.name, str(self.info.path), self.info.template_sha256, asdict(self.generation)]
        if conversations is not None:
            parts.append(conversations)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def missing_base(self, cache_dir: Path, conversations: list[list[dict]]) -> int:
        """How many of these conversations have no cached base answer yet."""
        folder = cache_dir / self.cache_key()
        return sum(not (folder / f"{self.cache_key([c])}.json").exists() for c in conversations)

    def cached_base(self, cache_dir: Path):
        """Base answers cached on disk, one file per conversation under a folder per base model and
        generation settings: a suite's answers are generated once, and a job that adds prompts (its
        cipher or system prompt) generates only those."""

        def generate(conversations: list[list[dict]]) -> list[str]:
            folder = cache_dir / self.cache_key()
            paths = [folder / f"{self.cache_key([c])}.json" for c in conversations]
            todo = [i for i, p in enumerate(paths) if not p.exists()]
            fresh = dict(zip(todo, self.base([conversations[i] for i in todo]))) if todo else {}
            folder.mkdir(parents=True, exist_ok=True)
            for i, answer in fresh.items():
                tmp = paths[i].with_suffix(f".{os.getpid()}.tmp")  # a concurrent gate never reads half a file
                tmp.write_text(json.dumps(answer))
                tmp.replace(paths[i])
            return [fresh[i] if i in fresh else json.loads(paths[i].read_text()) for i in range(len(paths))]

        return generate


# A batch's common prompt start is read once when it is at least this long (shorter: no gain worth a pass).
MIN_SHARED_PREFIX = 8


def shared_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares, leaving each row at least its last token of its own
    (the first answer token's logits come from the batch pass); 0 below `MIN_SHARED_PREFIX`."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return n if n >= MIN_SHARED_PREFIX else 0


def prefix_groups(prompts: list[list[int]]) -> list[list[int]]:
    """Prompt indices grouped by a common start of at least `MIN_SHARED_PREFIX` tokens (the chat
    template and system prompt: the gate's suite, the closed-book questions), each group sorted by
    length (a batch pads little); groups in order of their first prompt."""
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i], i))
    groups: list[list[int]] = []
    for a, b in zip([None, *order], order):
        if a is not None and shared_prefix([prompts[a], prompts[b]]):
            groups[-1].append(b)
        else:
            groups.append([b])
    return sorted((sorted(g, key=lambda i: (len(prompts[i]), i)) for g in groups), key=min)


_last: dict = {}  # the one loaded model of this process's after-training steps (a worker runs one job)


def shared_generator(
    settings: Settings,
    base_name: str,
    adapter_dir: Path,
    max_new_tokens: int,
    generation: GenerationSettings | None = None,
) -> AdapterGenerator:
    """`AdapterGenerator` for this base model and adapter, loaded once for the gate and the
    regression check that follows it (each gets its own generation settings). Holds one model:
    another adapter replaces it."""
    import threading

    files = sorted((f.name, f.stat().st_mtime_ns) for f in Path(adapter_dir).iterdir() if f.is_file())
    key = (str(settings.models_dir), base_name, str(Path(adapter_dir).resolve()), tuple(files))
    with _last.setdefault("lock", threading.Lock()):
        if _last.get("key") != key:
            _last.pop("gen", None)  # free the old model before loading the new one
            _last["gen"], _last["key"] = AdapterGenerator(settings, base_name, adapter_dir, max_new_tokens), key
        return _last["gen"].configured(max_new_tokens, generation)


def release_shared() -> None:
    """Drop the shared model (after the last after-training step)."""
    _last.pop("gen", None)
    _last.pop("key", None)
