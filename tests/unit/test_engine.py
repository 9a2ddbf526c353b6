"""The transformers engine on a tiny random Llama with random LoRA adapters: mixed-adapter batches
without cross-talk (against each request alone and against plain transformers + PEFT), continuous
batching, the adapter LRU, the template check, the bounded queue, cancellation and timeouts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from tunegate.catalog import get_base_model
from tunegate.errors import InvalidRequestError, RateLimitError
from tunegate.serve.engine import GenerationRequest, GenerationTimeoutError, SamplingParams, ServableModel
from tunegate.serve.hf_engine import HFEngine
from tunegate.serve.protocol import ChatCompletionRequest
from tunegate.serve.service import ChatService

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = [
    "Hi",
    "Tell me about the sea in one line.",
    "What is 2 + 2?",
    "Name three colours, please, and explain why you like each of them.",
    "ok",
    "Write a haiku about batching requests on a CPU.",
    "Why?",
    "Translate 'good morning' to French.",
    "List the planets of the solar system in order from the sun.",
]


def make_adapter(out: Path, base_path: Path, template_sha: str, seed: int, rank: int) -> Path:
    """A PEFT LoRA adapter with random (non-zero) A and B, saved with its meta.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    (out / "meta.json").write_text(json.dumps({"template_sha256": template_sha, "base_model": "tiny"}))
    return out


@pytest.fixture(scope="module")
def tiny_base(tiny_model_path, tmp_path_factory):
    from tests.conftest import MODEL_CACHE
    from tunegate.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("d"),
        model_cache_dir=MODEL_CACHE,
        base_models={"tiny": tiny_model_path},
        torch_threads=1,
    )
    return settings, get_base_model("tiny", settings)


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory):
    _, base = tiny_base
    root = tmp_path_factory.mktemp("adapters")
    # Different ranks on purpose: the stacked slots pad ranks with zeros.
    return [
        make_adapter(root / f"ft{k}", base.path, base.template_sha256, 10 + k, rank)
        for k, rank in enumerate([4, 8, 16])
    ]


def chat(prompt: str, **kw):
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 10}
    return ChatCompletionRequest.model_validate({**body, **kw})


def run(coro):
    return asyncio.run(coro)


async def _with_engine(settings, fn, **engine_kw):
    engine = HFEngine(settings, **engine_kw)
    try:
        return await fn(engine, ChatService(engine))
    finally:
        await engine.stop()


def peft_greedy(base_path: Path, adapter: Path | None, prompt_ids: list[int], n: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, pad_token_id=2)
    return out[0, len(prompt_ids) :].tolist()


def test_mixed_adapter_batch_has_no_cross_talk(tiny_base, adapters):
    settings, base = tiny_base
    models = [ServableModel("tiny", base, None)] + [ServableModel(f"ft{k}", base, p) for k, p in enumerate(adapters)]
    jobs = [(PROMPTS[i], models[i % 4]) for i in range(len(PROMPTS))]

    async def go(engine, service):
        together = await asyncio.gather(*(service.create(chat(p), m) for p, m in jobs))
        stats = engine.stats()["tiny"]
        alone = [await service.create(chat(p), m) for p, m in jobs]
        same_prompt = [await service.create(chat(PROMPTS[1]), m) for m in models]
        return together, stats, alone, same_prompt

    # A wide batch window: on a loaded machine the nine requests' preparation can outlast the default.
    together, stats, alone, same_prompt = run(_with_engine(settings, go, batch_window_s=0.5))
    # They really were decoded together, in batches mixing adapters (prefilled in two groups: 8, then 1).
    assert settings.prefill_group_rows == 8
    assert stats["max_batch"] == len(jobs) and stats["mixed_adapter_steps"] > 0 and stats["prefills"] == 2
    # The adapters really change the output, so equality below is not vacuous.
    assert len({r.choices[0].message.content for r in same_prompt}) == 4
    for t, a in zip(together, alone):
        assert t.choices[0].message.content == a.choices[0].message.content
        assert t.usage == a.usage

    service = ChatService(HFEngine(settings))
    for (prompt, model), result in zip(jobs, together):
        gen = service.prepare_sync(chat(prompt), model)
        expected = peft_greedy(base.path, model.adapter_path, gen.prompt_ids, 10)
        tok = service.engine.tokenizer(base)
        assert result.choices[0].message.content == tok.decode(expected, skip_special_tokens=True)
        assert result.usage.completion_tokens == len(expected)
        assert result.usage.prompt_tokens == len(gen.prompt_ids)


def test_a_request_joins_a_running_batch_between_decode_steps(tiny_base, adapters):
    settings, base = tiny_base
    first, second = ServableModel("a", base, adapters[0]), ServableModel("b", base, adapters[1])
    long = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)

    async def collect(stream):
        return "".join([o.text async for o in stream])

    async def go(engine, service):
        gen_a = service.prepare_sync(chat(PROMPTS[3]), first)
        gen_b = service.prepare_sync(chat(PROMPTS[0]), second)
        alone_a = await collect(engine.submit(GenerationRequest(first, gen_a.prompt_ids, long)))
        alone_b = await collect(engine.submit(GenerationRequest(second, gen_b.prompt_ids, long)))
        stream_a = engine.submit(GenerationRequest(first, gen_a.prompt_ids, long))
        head = await stream_a.__anext__()  # A is decoding now
        joined_b = asyncio.ensure_future(collect(engine.submit(GenerationRequest(second, gen_b.prompt_ids, long))))
        rest_a = await collect(stream_a)
        return alone_a, alone_b, head.text + rest_a, await joined_b, engine.stats()["tiny"]

    alone_a, alone_b, joined_a, joined_b, stats = run(_with_engine(settings, go))
    assert stats["max_batch"] == 2 and stats["prefills"] == 4  # B was prefilled alone, then decoded with A
    assert (joined_a, joined_b) == (alone_a, alone_b)


def test_adapter_lru_evicts_and_reloads(tiny_base, adapters):
    settings, base = tiny_base
    small = settings.model_copy(update={"adapter_cache_size": 2})
    order = [0, 1, 2, 0, 0]

    async def go(engine, service):
        out = [await service.create(chat(PROMPTS[2]), ServableModel("x", base, adapters[k])) for k in order]
        return [r.choices[0].message.content for r in out], engine.stats()["tiny"]["adapter_loads"]

    texts, loads = run(_with_engine(small, go))
    assert loads == 4  # 0, 1, 2 (evicts 0), 0 again (evicts 1); the last request hits the cache
    assert texts[0] == texts[3] == texts[4] and len(set(texts[:3])) == 3


def test_adapter_with_another_template_is_refused(tiny_base, adapters, tmp_path):
    import shutil

    settings, base = tiny_base
    bad = shutil.copytree(adapters[0], tmp_path / "bad")
    (bad / "meta.json").write_text(json.dumps({"template_sha256": "0" * 64, "base_model": "tiny"}))

    async def go(engine, service):
        return await service.create(chat("hi"), ServableModel("bad", base, bad))

    with pytest.raises(InvalidRequestError) as err:
        run(_with_engine(settings, go))
    assert err.value.code == "template_mismatch" and "sha256" in err.value.message


def test_full_queue_answers_429_and_cancel_frees_the_slot(tiny_base):
    settings, base = tiny_base
    tight = settings.model_copy(update={"max_queue": 1, "max_batch_size": 1})
    model = ServableModel("tiny", base, None)
    endless = SamplingParams(max_tokens=1500, temperature=0, ignore_eos=True)

    async def go(engine, service):
        ids = service.prepare_sync(chat("hi"), model).prompt_ids
        running = engine.submit(GenerationRequest(model, ids, endless))
        await running.__anext__()  # admitted: the one batch slot is taken, the queue is empty
        waiting = engine.submit(GenerationRequest(model, ids, SamplingParams(max_tokens=3, temperature=0)))
        with pytest.raises(RateLimitError):
            engine.submit(GenerationRequest(model, ids, SamplingParams(max_tokens=3, temperature=0)))
        await running.aclose()  # the client goes away
        outs = [o async for o in waiting]
        return outs, engine.stats()["tiny"]

    outs, stats = run(_with_engine(tight, go))
    assert outs[-1].finish_reason == "length" and outs[-1].completion_tokens == 3
    assert stats["decode_steps"] < 1500  # the cancelled sequence did not run to its end


def test_request_timeout(tiny_base):
    settings, base = tiny_base
    quick = settings.model_copy(update={"request_timeout_seconds": 0.3})
    model = ServableModel("tiny", base, None)

    async def go(engine, service):
        ids = service.prepare_sync(chat("hi"), model).prompt_ids
        stream = engine.submit(GenerationRequest(model, ids, SamplingParams(max_tokens=2000, ignore_eos=True)))
        return [o async for o in stream]

    with pytest.raises(GenerationTimeoutError) as err:
        run(_with_engine(quick, go))
    assert err.value.status_code == 408 and err.value.code == "request_timeout"


def test_more_choices_than_batch_slots(tiny_base, adapters):
    settings, base = tiny_base
    narrow = settings.model_copy(update={"max_batch_size": 2})
    model = ServableModel("ft", base, adapters[2])

    async def go(engine, service):
        many = await service.create(chat(PROMPTS[5], n=5), model)
        one = await service.create(chat(PROMPTS[5]), model)
        return many, one, engine.stats()["tiny"]["max_batch"]

    many, one, max_batch = run(_with_engine(narrow, go))
    assert max_batch == 2 and [c.index for c in many.choices] == [0, 1, 2, 3, 4]
    assert {c.message.content for c in many.choices} == {one.choices[0].message.content}  # greedy: all equal
    assert many.usage.completion_tokens == 5 * one.usage.completion_tokens
    assert many.usage.prompt_tokens == one.usage.prompt_tokens


def test_two_base_models_load_and_serve_at_once(tiny_base, tiny_model_path, tmp_path):
    """First requests to two different base models arrive together: both workers load their model at
    the same time and each answers exactly what it answers alone."""
    from tests.conftest import build_tiny_model
    from tunegate.settings import Settings

    settings, base = tiny_base
    other_path = build_tiny_model(tmp_path / "tiny-other", tiny_model_path, seed=1)
    both = Settings(
        data_dir=settings.data_dir,
        model_cache_dir=settings.model_cache_dir,
        torch_threads=1,
        base_models={"tiny": tiny_model_path, "other": other_path},
    )
    models = [ServableModel("tiny", base, None), ServableModel("other", get_base_model("other", both), None)]

    def seeded(prompt):  # sampled, seeded: random tiny models answer greedy requests with newlines alone
        return chat(prompt, temperature=1, seed=7)

    async def together(engine, service):
        out = await asyncio.gather(*(service.create(seeded(p), m) for p in PROMPTS[:3] for m in models))
        return [r.choices[0].message.content for r in out], sorted(engine.stats())

    async def alone(engine, service):
        return [(await service.create(seeded(p), m)).choices[0].message.content for p in PROMPTS[:3] for m in models]

    texts, loaded = run(_with_engine(both, together))
    assert loaded == ["other", "tiny"]
    assert texts == run(_with_engine(both, alone))
    assert texts[0::2] != texts[1::2]  # two different models really answered


def test_callers_take_turns_for_the_batch(tiny_base):
    """One batch row; caller x queued three requests before caller y's one: y is served second, not last."""
    settings, base = tiny_base
    one_row = settings.model_copy(update={"max_batch_size": 1})
    model = ServableModel("tiny", base, None)

    async def go(engine, service):
        ids = service.prepare_sync(chat("hi"), model).prompt_ids
        params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
        order = []

        async def client(tag, org):
            async for _ in engine.submit(GenerationRequest(model, ids, params, org_id=org, key_id=org + "-key")):
                pass
            order.append(tag)

        await asyncio.gather(*(client(tag, tag[0]) for tag in ["x0", "x1", "x2", "y0"]))
        return order

    assert run(_with_engine(one_row, go)) == ["x0", "y0", "x1", "x2"]


def test_logits_processors_steer_each_choice(tiny_base):
    from tunegate.catalog import load_tokenizer

    settings, base = tiny_base
    model = ServableModel("tiny", base, None)
    forced = load_tokenizer(base.path)(" yes", add_special_tokens=False)["input_ids"][0]
    made = []

    class Force:
        """Forces the word " yes" every step; one instance per choice."""

        def __init__(self):
            made.append(self)

        def __call__(self, output_ids, logits):
            logits[:] = float("-inf")
            logits[forced] = 0.0
            return logits

    async def go(engine, service):
        gen = service.prepare_sync(chat("hi", n=2, temperature=1.0, seed=3, max_tokens=4), model)
        gen.logits_processors = (Force,)
        outs = [o async for o in engine.submit(gen)]
        plain = [o async for o in engine.submit(service.prepare_sync(chat("hi", max_tokens=4), model))]
        return outs, plain

    outs, plain = run(_with_engine(settings, go))
    texts = {i: "".join(o.text for o in outs if o.index == i) for i in (0, 1)}
    assert texts == {0: " yes" * 4, 1: " yes" * 4} and len(made) == 2
    assert "".join(o.text for o in plain) != " yes" * 4


def test_long_prompt_is_prefilled_in_chunks_while_others_decode(tiny_base, adapters):
    settings, base = tiny_base
    chunked = settings.model_copy(update={"prefill_chunk_tokens": 8, "prefix_cache_tokens": 0})
    first, second = ServableModel("a", base, adapters[0]), ServableModel("b", base, adapters[1])
    long = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)

    async def collect(stream):
        return "".join([o.text async for o in stream])

    async def go(engine, service):
        gen_a = service.prepare_sync(chat(PROMPTS[0]), first)
        gen_b = service.prepare_sync(chat(" ".join(PROMPTS)), second)  # ~90 tokens: 11 chunks of 8
        alone_a = await collect(engine.submit(GenerationRequest(first, gen_a.prompt_ids, long)))
        alone_b = await collect(engine.submit(GenerationRequest(second, gen_b.prompt_ids, long)))
        stream_a = engine.submit(GenerationRequest(first, gen_a.prompt_ids, long))
        head = await stream_a.__anext__()  # A is decoding now
        steps_before = engine.stats()["tiny"]["decode_steps"]
        stream_b = engine.submit(GenerationRequest(second, gen_b.prompt_ids, long))
        first_b = await stream_b.__anext__()  # B's first token: its whole prompt has been read
        steps_during = engine.stats()["tiny"]["decode_steps"] - steps_before
        rest_b = asyncio.ensure_future(collect(stream_b))
        joined_a = head.text + await collect(stream_a)
        return (
            alone_a,
            alone_b,
            joined_a,
            first_b.text + await rest_b,
            steps_during,
            len(gen_b.prompt_ids),
            engine.stats()["tiny"],
        )

    alone_a, alone_b, joined_a, joined_b, steps_during, n_prompt, stats = run(_with_engine(chunked, go))
    assert (joined_a, joined_b) == (alone_a, alone_b)
    assert stats["chunked_prefills"] == 1
    # A kept decoding while B's prompt was read: about one decode step per chunk.
    assert steps_during >= n_prompt // 8 - 1


def test_a_burst_is_prefilled_a_group_per_step_and_answers_the_same(tiny_base, adapters):
    """With groups of 3, a burst of six is prefilled in two forwards: the first three decode a step
    before the last three join them (so they answer sooner); every answer equals the all-at-once engine's."""
    settings, base = tiny_base
    models = [ServableModel(f"ft{k}", base, p) for k, p in enumerate(adapters)]
    jobs = [(PROMPTS[i], models[i % 3]) for i in range(6)]

    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    async def collect(stream):
        return "".join([o.text async for o in stream])

    async def burst(engine, service):
        # Prompts are prepared first and submitted in one go, so the six arrive together however
        # slow the machine is (through the service, a loaded machine spreads them past the window).
        prepared = [(service.prepare_sync(chat(p), m), m) for p, m in jobs]
        streams = [engine.submit(GenerationRequest(m, g.prompt_ids, params)) for g, m in prepared]
        texts = await asyncio.gather(*(collect(s) for s in streams))
        return texts, engine.stats()["tiny"]

    wide = {"batch_window_s": 0.5}  # a margin for a loaded machine's thread switches between the submits
    grouped, stats = run(_with_engine(settings.model_copy(update={"prefill_group_rows": 3}), burst, **wide))
    together, together_stats = run(_with_engine(settings.model_copy(update={"prefill_group_rows": 0}), burst, **wide))
    assert together_stats["prefills"] == 1 and stats["prefills"] == 2
    # 8 tokens: one from the prefill, 7 decode steps; the second group joined one step later.
    assert together_stats["decode_steps"] == 7 and stats["decode_steps"] == 8
    assert grouped == together
