"""Each part of the engine alone, on the tiny random Llama: the KV cache's merge/trim against
separate forwards, the runner against plain transformers, the scheduler's fair admission and
deadlines, the output processor's logits-processor hook, stops and lengths, and the memory of
adapters that failed to load."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.unit.test_engine import make_adapter
from tunegate.catalog import get_base_model
from tunegate.errors import InvalidRequestError, TunegateError
from tunegate.serve.engine import GenerationRequest, SamplingParams, ServableModel
from tunegate.serve.output import OutputProcessor
from tunegate.serve.runner import LoadFailures, ModelRunner
from tunegate.serve.scheduler import Pending, Scheduler


@pytest.fixture(scope="module")
def base_and_settings(tiny_model_path, tmp_path_factory):
    from tests.conftest import MODEL_CACHE
    from tunegate.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("d"),
        model_cache_dir=MODEL_CACHE,
        base_models={"tiny": tiny_model_path},
        torch_threads=1,
        adapter_cache_size=2,
    )
    return get_base_model("tiny", settings), settings


@pytest.fixture(scope="module")
def runner(base_and_settings):
    base, settings = base_and_settings
    with torch.inference_mode():
        yield ModelRunner(base, settings, LoadFailures())


def greedy_alone(runner, prompt, steps):
    """(greedy tokens, logits of each step) of `prompt` with the runner, batch of one (the reference)."""
    logits, cache = runner.prefill([prompt], [0])
    out, seen = [int(logits.argmax(-1))], [logits[0]]
    for i in range(steps - 1):
        logits = runner.decode([out[-1]], [len(prompt) + i], [0], cache)
        out.append(int(logits.argmax(-1)))
        seen.append(logits[0])
    return out, seen


def test_runner_matches_transformers_generate(runner):
    prompt = runner.tokenizer("Hello there, how are you?")["input_ids"]
    with torch.inference_mode():
        ref = runner.model.generate(
            torch.tensor([prompt]),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        mine, logits = greedy_alone(runner, prompt, 6)
    assert mine == ref.sequences[0, len(prompt) :].tolist()
    for a, b in zip(logits, ref.logits):
        torch.testing.assert_close(a, b[0], atol=1e-4, rtol=1e-4)


def test_kv_cache_merge_expand_and_trim_match_separate_sequences(runner):
    # Random tiny models repeat one token greedily, so the check is on the logits of every step.
    a = runner.tokenizer("A fairly long first prompt with many words in it")["input_ids"]
    b = runner.tokenizer("Short")["input_ids"]
    close = {"atol": 1e-4, "rtol": 1e-4}
    with torch.inference_mode():
        (ref_a, lg_a), (ref_b, lg_b) = greedy_alone(runner, a, 6), greedy_alone(runner, b, 5)
        # A runs alone for two steps, then B joins (merge pads B's shorter rows on the left), B's one
        # prefill row is expanded to two choices, and A leaves (its extra columns are trimmed).
        la, cache = runner.prefill([a], [0])
        for i in range(2):
            la = runner.decode([ref_a[i]], [len(a) + i], [0], cache)
        torch.testing.assert_close(la[0], lg_a[2], **close)
        _, cache_b = runner.prefill([b], [0])
        cache_b.expand([0, 0])
        assert cache_b.rows == 2 and cache_b.length == len(b)
        cache.merge(cache_b)
        assert cache.rows == 3 and cache.length == len(a) + 2
        assert cache.mask.sum(1).tolist() == [len(a) + 2, len(b), len(b)]
        for layer in cache.past.layers:  # [rows, kv heads, length, head size]
            assert layer.keys.shape[0] == 3 and layer.keys.shape[2] == cache.length
        pos = [len(a) + 2, len(b), len(b)]
        for step in range(3):
            logits = runner.decode([ref_a[2 + step], ref_b[step], ref_b[step]], pos, [0, 0, 0], cache)
            pos = [p + 1 for p in pos]
            torch.testing.assert_close(logits[0], lg_a[3 + step], **close)
            torch.testing.assert_close(logits[1], lg_b[1 + step], **close)
            torch.testing.assert_close(logits[2], lg_b[1 + step], **close)
        cache.keep([2])
        assert cache.length == len(b) + 3  # A's extra columns were padding for the remaining row: trimmed
        logits = runner.decode([ref_b[3]], pos[2:], [0], cache)
        torch.testing.assert_close(logits[0], lg_b[4], **close)


def _req(org, key, n=1, prompt=(1, 2, 3), adapter=None):
    return GenerationRequest(
        ServableModel("m", None, adapter), list(prompt), SamplingParams(max_tokens=4), n=n, org_id=org, key_id=key
    )


def test_scheduler_takes_turns_across_organisations_then_keys():
    left = []
    sched = Scheduler(on_leave=left.append)
    reqs = [Pending(_req("big", "k1"), 1e18) for _ in range(4)] + [Pending(_req("big", "k2"), 1e18)]
    reqs += [Pending(_req("small", "s"), 1e18)]
    for p in reqs:
        sched.add(p)
    order = []
    while True:
        admitted, _ = sched.admit(1, set(), 10_000, lambda path, used: 0)
        if not admitted:
            break
        order.append(admitted[0].request)
    # One turn per organisation per round, and inside "big" one turn per key.
    assert order == [reqs[0], reqs[5], reqs[4], reqs[1], reqs[2], reqs[3]]
    assert left == order and sched.waiting() == []


def test_scheduler_room_budget_adapter_failures_and_deadlines():
    sched = Scheduler()
    many = Pending(_req("o", "k", n=5), 1e18)
    sched.add(many)
    a, _ = sched.admit(2, set(), 10_000, lambda path, used: 0)
    assert [(x.first, x.count) for x in a] == [(0, 2)] and sched.waiting() == [many]  # the rest waits
    a, _ = sched.admit(8, set(), 10_000, lambda path, used: 0)
    assert [(x.first, x.count) for x in a] == [(2, 3)] and sched.waiting() == []

    long, short = Pending(_req("o", "k", prompt=range(50)), 1e18), Pending(_req("p", "k", prompt=range(50)), 1e18)
    sched.add(long)
    sched.add(short)
    a, _ = sched.admit(8, set(), 60, lambda path, used: 0)
    assert [x.request for x in a] == [long]  # the second prompt waits for the next prefill

    def broken(path, used):
        raise InvalidRequestError("damaged", code="model_load_failed")

    a, failed = sched.admit(8, set(), 10_000, broken)
    assert a == [] and [(p, e.code) for p, e in failed] == [(short, "model_load_failed")]

    late, cancelled = Pending(_req("o", "k"), 0.0), Pending(_req("o", "k"), 1e18)
    cancelled.cancelled = True
    sched.add(late)
    sched.add(cancelled)
    assert sched.expire(now=1.0) == [late] and sched.waiting() == []


def test_output_processor_hook_stops_and_length(runner):
    tok = runner.tokenizer
    proc = OutputProcessor(tok, runner.eos)
    text_ids = tok("one two three four", add_special_tokens=False)["input_ids"]
    seen = []

    class Force:  # a per-sequence logits processor with its own state: forces `text_ids` in order
        def __call__(self, output_ids, logits):
            seen.append(list(output_ids))
            logits[:] = -1e9
            logits[text_ids[len(output_ids)]] = 0.0
            return logits

    vocab = runner.model.config.vocab_size
    plain = SamplingParams(max_tokens=2, temperature=0, logprobs=True)
    stop = SamplingParams(max_tokens=50, temperature=0.7, seed=1, stop=(" three",))
    seqs = [proc.new_sequence(plain, 0), proc.new_sequence(stop, 1, (Force,))]
    torch.manual_seed(0)
    raw = torch.randn(2, vocab)
    outs = [proc.process(seqs, raw.clone())]
    outs.append(proc.process(seqs, raw.clone()))
    outs.append(proc.process(seqs[1:], raw[1:].clone()))
    # The unconstrained greedy row took the raw argmax twice and ended by length, with raw logprobs.
    assert seqs[0].output == [int(raw[0].argmax())] * 2 and outs[1][0].finish_reason == "length"
    assert abs(outs[0][0].logprobs[0].logprob - float(torch.log_softmax(raw[0], -1).max())) < 1e-5
    # The processor saw each step's history, forced the text, and the stop string cut it exactly.
    assert seen == [[], text_ids[:1], text_ids[:2]]
    assert seqs[1].finish_reason == "stop"
    assert "".join(o.text for o in (outs[0][1], outs[1][1], outs[2][0]) if o) == "one two"


def test_damaged_adapter_fails_once_and_is_retried_after_repair(base_and_settings, runner, tmp_path):
    base, _ = base_and_settings
    good = make_adapter(tmp_path / "good", base.path, base.template_sha256, 3, 4)
    bad = shutil.copytree(good, tmp_path / "bad")
    weights = bad / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])  # a truncated upload or copy
    before = runner.stats["adapter_load_failures"]
    errors = []
    for _ in range(3):
        with pytest.raises(TunegateError) as err:
            runner.acquire_adapter(bad, set())
        errors.append(err.value)
    assert errors[0].code == "model_load_failed" and errors[0].param == "model" and "damaged" in errors[0].message
    assert all(e is errors[0] for e in errors)  # remembered: the file was read once, not three times
    assert runner.stats["adapter_load_failures"] == before + 1
    assert runner.acquire_adapter(good, set()) > 0  # other adapters keep loading
    weights.write_bytes(original)  # repaired: size and mtime changed, so it is tried again
    assert runner.acquire_adapter(bad, set()) > 0


def test_prefix_cache_lookup_is_per_adapter_longest_and_bounded():
    from pathlib import Path

    from tunegate.serve.prefix_cache import PrefixCache

    def kv(n):  # per layer [1, H, n, D]; the values say which position they belong to
        t = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1)
        return [(t, -t)]

    cache = PrefixCache(max_tokens=60, min_tokens=4)
    a, b = list(range(20)), list(range(10)) + [99] * 10
    cache.store(None, a, lambda: kv(20))
    cache.store(Path("ft"), b, lambda: kv(20))
    assert cache.lookup(None, list(range(3)) + [7] * 10) is None  # shares 3 < 4 tokens
    assert cache.lookup(Path("other"), a + [1]) is None  # K/V depend on the adapter
    p, layers = cache.lookup(None, list(range(15)) + [5, 5])
    assert p == 15 and layers[0][0].shape == (1, 1, 15, 1) and layers[0][0][0, 0, -1, 0] == 14
    p, _ = cache.lookup(None, a)  # the whole prompt is cached: its last token still runs
    assert p == 19
    cache.store(None, [1] * 30, lambda: kv(30))  # 70 tokens > 60: the least recently used (b) goes
    assert cache.lookup(Path("ft"), b + [1]) is None and len(cache) == 2


def test_prefix_cached_prefill_gives_the_same_logits_and_tokens(runner):
    from tunegate.serve.kv_cache import BatchCache
    from tunegate.serve.prefix_cache import PrefixCache

    system = "You are a careful assistant who answers every question about the sea in one short sentence. "
    prompts = [
        runner.tokenizer(system + q)["input_ids"] for q in ("Why is it salty?", "How deep is it?", "Is it blue?")
    ]
    close = {"atol": 1e-4, "rtol": 1e-4}
    with torch.inference_mode():
        refs = [greedy_alone(runner, p, 4) for p in prompts]
        cache = PrefixCache(max_tokens=1000)
        logits, first = runner.prefill([prompts[0]], [0])
        cache.store(None, prompts[0], lambda: first.row(0))
        hits = [cache.lookup(None, p) for p in prompts[1:]]
        assert all(h is not None and h[0] >= 16 for h in hits)
        logits, batch = runner.prefill_cached(hits, prompts[1:], [0, 0])  # two different rests, one forward
        assert isinstance(batch, BatchCache) and batch.mask.sum(1).tolist() == [len(p) for p in prompts[1:]]
        out = [[int(x)] for x in logits.argmax(-1)]
        for i, (_tokens, ref_logits) in enumerate(refs[1:]):
            torch.testing.assert_close(logits[i], ref_logits[0], **close)
        pos = [len(p) for p in prompts[1:]]
        for step in range(3):
            logits = runner.decode([o[-1] for o in out], pos, [0, 0], batch)
            pos = [p + 1 for p in pos]
            for i, (_, ref_logits) in enumerate(refs[1:]):
                torch.testing.assert_close(logits[i], ref_logits[step + 1], **close)
                out[i].append(int(logits[i].argmax()))
    assert out == [tokens for tokens, _ in refs[1:]]


def test_engine_with_prefix_cache_answers_like_without(base_and_settings, tmp_path):
    import asyncio

    from tunegate.serve.hf_engine import HFEngine
    from tunegate.serve.protocol import ChatCompletionRequest
    from tunegate.serve.service import ChatService

    base, settings = base_and_settings
    adapter = make_adapter(tmp_path / "ft", base.path, base.template_sha256, 5, 8)
    models = [ServableModel("tiny", base, None), ServableModel("ft", base, adapter)]
    system = {"role": "system", "content": "You answer questions about the weather with one short sentence only."}
    bodies = [
        ChatCompletionRequest.model_validate(
            {
                "model": "m",
                "messages": [system, {"role": "user", "content": q}],
                "temperature": 1.0,
                "seed": seed,
                "max_tokens": 6,
            }
        )
        for seed, q in enumerate(("Rain today?", "Sun tomorrow?", "Wind?"))
    ]

    async def answers(s):
        engine = HFEngine(s)
        service = ChatService(engine)
        try:
            out = []
            for body in bodies:  # one at a time, so later prompts find the earlier ones cached
                for m in models:
                    out.append((await service.create(body, m)).choices[0].message.content)
            return out, engine.stats()["tiny"]
        finally:
            await engine.stop()

    with_cache, stats = asyncio.run(answers(settings))
    without, plain = asyncio.run(answers(settings.model_copy(update={"prefix_cache_tokens": 0})))
    assert with_cache == without and len(set(with_cache)) >= 4  # not one answer repeated
    assert stats["prefix_hits"] >= 4 and stats["prefix_tokens_saved"] > 4 * 16 and plain["prefix_hits"] == 0


def test_grouped_multi_lora_matches_each_rows_own_adapter():
    """The mixed-batch LoRA (adapters side by side, one-hot mask) equals each row's own adapter applied
    alone, whatever the mix (no adapter, repeated adapters, ranks padded), and a re-installed slot is
    seen by the next batch (the concatenation is rebuilt)."""
    from torch import nn

    from tunegate.serve.lora import BatchSlots, MultiLoraLinear

    torch.manual_seed(0)
    base = nn.Linear(12, 20, bias=False)
    slots = BatchSlots()
    layer = MultiLoraLinear(base, 4, slots)
    weights = {s: (torch.randn(r, 12), torch.randn(20, r)) for s, r in [(1, 2), (2, 4), (3, 3)]}
    for s, (a, b) in weights.items():
        layer.install(s, a, b)
    x = torch.randn(6, 5, 12)  # prefill-shaped: rows x tokens x features

    def expected(rows):
        out = base(x).clone()
        for i, s in enumerate(rows):
            if s:
                a, b = weights[s]
                out[i] += x[i] @ a.T @ b.T
        return out

    with torch.inference_mode():
        for rows in ([1, 2, 0, 1, 3, 2], [3, 3, 3, 3, 3, 3], [0, 0, 2, 0, 0, 1]):
            slots.set(rows)
            torch.testing.assert_close(layer(x), expected(rows), atol=1e-5, rtol=1e-5)
        weights[2] = (torch.randn(4, 12), torch.randn(20, 4))
        layer.install(2, *weights[2])
        slots.set([0, 0, 2, 0, 0, 1])
        torch.testing.assert_close(layer(x), expected([0, 0, 2, 0, 0, 1]), atol=1e-5, rtol=1e-5)
