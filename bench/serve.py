"""Serving benchmark: 16 concurrent streaming clients over 4 LoRA adapters of the real
SmolLM2-135M-Instruct, against two baselines measured in the same run: the same requests one at a
time with plain transformers `generate` after PEFT `set_adapter`, and all of them in one PEFT
mixed-adapter batch (`generate(..., adapter_names=[...])`, left-padded).

Both sides decode greedily exactly `--tokens` new tokens (EOS ignored), from the same prompt ids,
in the same process (same allocator, same torch threads). The engine side goes through the chat
service (prompt rendering, sampling, detokenization, OpenAI chunks), in process.

    python bench/serve.py [--clients 16] [--adapters 4] [--tokens 64] [--threads 2] [--jemalloc]

TTFT is the time from a client's request to its first content token (not the empty role chunk).

Two more scenarios compare the engine with a feature on and off, in the same run:

    python bench/serve.py --scenario prefix    # every client shares a long system prompt: prefix caching
    python bench/serve.py --scenario chunked   # a burst of long prompts arrives while streams decode:
                                               # chunked prefill (the longest stall of a running stream)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"  # Debian's libjemalloc2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain photosynthesis simply.",
    "Write a short poem about rain.",
    "How do I boil an egg?",
    "What is a prime number?",
    "Why is the sky blue?",
    "Suggest a name for a grey cat.",
    "What does a compiler do?",
    "Summarise the plot of Cinderella.",
    "How many legs does a spider have?",
    "What is machine learning?",
    "Tell me a fun fact about octopuses.",
    "How can I learn to juggle?",
    "What is the boiling point of water?",
    "Describe a sunset in two sentences.",
]
LONE = ["What is the capital of Spain?", "Give me two tips for studying.", "Explain gravity simply."]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def make_adapters(base, root: Path, count: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for k in range(count):
        torch.manual_seed(1000 + k)
        model = AutoModelForCausalLM.from_pretrained(base.path)
        # init_lora_weights=False: random A and non-zero B, so every adapter really changes the model.
        config = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False)
        out = root / f"adapter{k}"
        get_peft_model(model, config).save_pretrained(out)
        (out / "meta.json").write_text(json.dumps({"template_sha256": base.template_sha256, "base_model": base.name}))
        paths.append(out)
    return paths


async def engine_run(settings, base, adapters, questions, tokens):
    from tunegate.serve.engine import ServableModel
    from tunegate.serve.hf_engine import HFEngine
    from tunegate.serve.protocol import ChatCompletionRequest
    from tunegate.serve.service import ChatService

    engine = HFEngine(settings)
    service = ChatService(engine)
    models = [ServableModel(f"ft-{i}", base, p) for i, p in enumerate(adapters)]

    def request(q, max_tokens=tokens):
        return ChatCompletionRequest.model_validate(
            {
                "model": "m",
                "messages": [{"role": "user", "content": q}],
                "temperature": 0,
                "max_tokens": max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
        )

    async def client(q, model, t0, max_tokens=tokens):
        chunks = await service.stream(request(q, max_tokens), model)
        ttft, usage = None, None
        async for c in chunks:
            if c.choices and c.choices[0].delta.content and ttft is None:
                ttft = time.perf_counter() - t0
            if c.usage:
                usage = c.usage
        return ttft, usage.completion_tokens, time.perf_counter() - t0

    try:
        for m in models:  # warm-up: load the base once and every adapter
            await client("Hello", m, time.perf_counter(), 2)
        lone = []
        for i in range(3):
            t0 = time.perf_counter()
            # Questions not in the burst (their prompts must not be in the prefix cache); the first token is enough.
            lone.append((await client(LONE[i], models[i % len(models)], t0, 2))[0])
        t0, c0 = time.perf_counter(), time.process_time()
        results = await asyncio.gather(*(client(q, models[i % len(models)], t0) for i, q in enumerate(questions)))
        wall = time.perf_counter() - t0
        return {
            "lone_ttft": statistics.median(lone),
            "ttft": [r[0] for r in results],
            "cpu": time.process_time() - c0,
            "tokens": sum(r[1] for r in results),
            "wall": wall,
            "stats": engine.stats(),
        }
    finally:
        await engine.stop()


def baseline_run(base, adapters, prompts, tokens):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:  # the first call carries the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
    for i, p in enumerate(adapters[1:], 1):
        model.load_adapter(p, adapter_name=f"a{i}")
    model.eval()
    lone, from_start, produced = [], [], 0
    with torch.inference_mode():
        model.set_adapter("a0")
        model.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False, pad_token_id=2)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for i, ids in enumerate(prompts):
            model.set_adapter(f"a{i % len(adapters)}")
            streamer, start = FirstToken(), time.perf_counter()
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=2,
                streamer=streamer,
            )
            produced += out.shape[1] - len(ids)
            lone.append(streamer.first - start)
            from_start.append(streamer.first - t0)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        # PEFT's own mixed-adapter batch: every prompt at once, left-padded, `adapter_names=` per row.
        width = max(map(len, prompts))
        ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        names = [f"a{i % len(adapters)}" for i in range(len(prompts))]
        streamer = FirstToken()
        t1, c1 = time.perf_counter(), time.process_time()
        out = model.generate(
            ids,
            attention_mask=mask,
            adapter_names=names,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=2,
            streamer=streamer,
        )
        batch = {
            "tokens": (out.shape[1] - width) * len(prompts),
            "wall": time.perf_counter() - t1,
            "cpu": time.process_time() - c1,
            "ttft": [streamer.first - t1] * len(prompts),
        }
    return {
        "lone_ttft": statistics.median(lone),
        "ttft": from_start,
        "tokens": produced,
        "wall": wall,
        "cpu": cpu,
        "peft_batch": batch,
    }


SYSTEM = (
    "You are the support assistant of a small bakery in Lyon. Answer politely and briefly. The bakery opens "
    "at seven and closes at seven, except on Sundays when it closes at one. It sells bread, pastries, cakes "
    "to order (two days' notice), coffee and tea. Payment by card or cash. There is no parking, but a bus "
    "stop is in front of the shop. Gluten-free bread is baked on Fridays only. Never promise delivery; "
    "never discuss prices of cakes to order, which depend on the design; suggest calling the shop instead. "
)


async def scenario_run(settings, base, adapters, bodies, *, warm_body=None, running_body=None):
    """Run `bodies` (chat request dicts, streaming) concurrently; with `running_body`, first start one
    stream per adapter and measure their longest gap between two tokens while `bodies` arrive."""
    from tunegate.serve.engine import ServableModel
    from tunegate.serve.hf_engine import HFEngine
    from tunegate.serve.protocol import ChatCompletionRequest
    from tunegate.serve.service import ChatService

    engine = HFEngine(settings)
    service = ChatService(engine)
    models = [ServableModel(f"ft-{i}", base, p) for i, p in enumerate(adapters)]

    async def client(body, model, t0, gaps=None):
        chunks = await service.stream(
            ChatCompletionRequest.model_validate({**body, "stream": True, "stream_options": {"include_usage": True}}),
            model,
        )
        ttft, usage, last = None, None, None
        async for c in chunks:
            now = time.perf_counter()
            if c.choices and c.choices[0].delta.content:
                ttft = ttft if ttft is not None else now - t0
                if gaps is not None and last is not None:
                    gaps.append(now - last)
                last = now
            if c.usage:
                usage = c.usage
        return ttft, usage.completion_tokens

    try:
        for m in models:  # warm-up: load the base once and every adapter
            await client(
                warm_body or {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                m,
                time.perf_counter(),
            )
        gaps: list[float] = []
        background = []
        if running_body is not None:
            t = time.perf_counter()
            background = [asyncio.ensure_future(client(running_body, m, t, gaps)) for m in models]
            while engine.stats()[base.name]["running"] < len(models):
                await asyncio.sleep(0.01)
            gaps.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        results = await asyncio.gather(*(client(b, models[i % len(models)], t0) for i, b in enumerate(bodies)))
        wall = time.perf_counter() - t0
        stall = max(gaps) if gaps else 0.0
        for task in background:
            task.cancel()
        return {
            "ttft": [r[0] for r in results],
            "tokens": sum(r[1] for r in results),
            "wall": wall,
            "cpu": time.process_time() - c0,
            "stall": stall,
            "stats": engine.stats()[base.name],
        }
    finally:
        await engine.stop()


def feature_scenarios(args, settings, base, adapters) -> None:
    settings = settings.model_copy(update={"request_timeout_seconds": 3600})  # busy machines are slow, not broken
    if args.scenario == "prefix":
        bodies = [
            {
                "model": "m",
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                "temperature": 0,
                "max_tokens": args.tokens,
                "ignore_eos": True,
            }
            for q in (QUESTIONS * 4)[: args.clients]
        ]
        warm = {**bodies[0], "max_tokens": 2}
        label, runs = "prefix caching", {}
        for name, update in [("off", {"prefix_cache_tokens": 0}), ("on", {})]:
            runs[name] = [
                asyncio.run(scenario_run(settings.model_copy(update=update), base, adapters, bodies, warm_body=warm))
                for _ in range(args.rounds)
            ]
    else:
        long_q = " ".join(QUESTIONS) * 6  # ~1,000 tokens: two chunks of 512
        bodies = [
            {
                "model": "m",
                "messages": [{"role": "user", "content": f"{i}: {long_q}"}],
                "temperature": 0,
                "max_tokens": 4,
            }
            for i in range(args.clients // 2)
        ]
        running = {
            "model": "m",
            "messages": [{"role": "user", "content": "Count to a hundred."}],
            "temperature": 0,
            "max_tokens": 1000,
            "ignore_eos": True,
        }
        label, runs = "chunked prefill", {}
        for name, update in [("off", {"prefill_chunk_tokens": 0}), ("on", {})]:
            runs[name] = [
                asyncio.run(
                    scenario_run(settings.model_copy(update=update), base, adapters, bodies, running_body=running)
                )
                for _ in range(args.rounds)
            ]
    print(
        f"\nScenario `{args.scenario}`: {len(bodies)} requests over {args.adapters} adapters, {label} off vs on "
        f"(best of {args.rounds} rounds by wall time).\n"
    )
    print(
        "| {label} | wall (s) | output tokens | tok/s | TTFT p50 (s) | longest stall of a running stream (s) "
        "| prefill forwards | prompt tokens from cache |".replace("{label}", label)
    )
    print("|---|---|---|---|---|---|---|---|")
    best = {}
    for name, rs in runs.items():
        r = best[name] = min(rs, key=lambda r: r["wall"])
        st = r["stats"]
        print(
            f"| {name} | {r['wall']:.2f} | {r['tokens']} | {r['tokens'] / r['wall']:.1f} | "
            f"{percentile(r['ttft'], 0.5):.3f} | {r['stall']:.3f} | {st['prefills']} | {st['prefix_tokens_saved']} |"
        )
    print("\nall rounds, wall (s): " + ", ".join(f"{n} {[round(r['wall'], 2) for r in rs]}" for n, rs in runs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternate baseline and engine this many times; the best round of each is reported "
        "(the machines are shared and noisy)",
    )
    parser.add_argument(
        "--scenario",
        choices=["mixed", "prefix", "chunked"],
        default="mixed",
        help="mixed: engine vs one-at-a-time baseline; prefix / chunked: the feature off vs on",
    )
    parser.add_argument(
        "--jemalloc",
        action="store_true",
        help="re-run under jemalloc with decay off (see PERF-NOTES); both sides get it",
    )
    args = parser.parse_args()
    if args.jemalloc and "jemalloc" not in os.environ.get("LD_PRELOAD", ""):
        env = {**os.environ, "LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from tunegate.catalog import DEFAULT_MODEL, get_base_model
    from tunegate.settings import Settings
    from tunegate.threads import run_with_cores

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            model_cache_dir=Path(os.environ.get("TUNEGATE_MODEL_CACHE_DIR", ROOT / ".cache" / "models")),
            max_batch_size=args.clients,
            adapter_cache_size=max(8, args.adapters),
            torch_threads=args.threads,
        )
        base = get_base_model(DEFAULT_MODEL, settings)
        adapters = make_adapters(base, Path(tmp), args.adapters)
        if args.scenario != "mixed":
            return feature_scenarios(args, settings, base, adapters)
        questions = (QUESTIONS * ((args.clients + len(QUESTIONS) - 1) // len(QUESTIONS)))[: args.clients]

        from tunegate.serve.engine import ServableModel
        from tunegate.serve.hf_engine import HFEngine
        from tunegate.serve.protocol import ChatCompletionRequest
        from tunegate.serve.service import ChatService

        prep = ChatService(HFEngine(settings))
        prompts = [
            prep.prepare_sync(
                ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": q}]}),
                ServableModel("m", base, None),
            ).prompt_ids
            for q in questions
        ]

        base_runs, eng_runs, whole_runs = [], [], []
        whole = settings.model_copy(update={"prefill_group_rows": 0})  # the burst prefilled in one forward
        for _ in range(args.rounds):
            # In a thread of its own, with the same thread count, so that its OpenMP pool ends with it:
            # a pool left in this (main) thread would slow the engine runs after it (tunegate/threads.py).
            base_runs.append(run_with_cores(baseline_run, base, adapters, prompts, args.tokens, threads=args.threads))
            eng_runs.append(asyncio.run(engine_run(settings, base, adapters, questions, args.tokens)))
            whole_runs.append(asyncio.run(engine_run(whole, base, adapters, questions, args.tokens)))

    tps = lambda r: r["tokens"] / r["wall"]  # noqa: E731
    base_res, eng, eng_whole = max(base_runs, key=tps), max(eng_runs, key=tps), max(whole_runs, key=tps)
    peft = max((r["peft_batch"] for r in base_runs), key=tps)
    b_tps, e_tps, p_tps = tps(base_res), tps(eng), tps(peft)
    allocator = "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
    print(
        f"\nSmolLM2-135M-Instruct fp32, {args.clients} requests over {args.adapters} LoRA adapters (r=16, 7 modules), "
        f"greedy, {args.tokens} new tokens each, {args.threads} torch threads, {allocator}; "
        f"prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens.\n"
    )
    print(
        "| run | output tokens | wall (s) | aggregate tok/s | tokens per CPU-second | TTFT p50 (s) | TTFT p95 (s) "
        "| lone-request TTFT (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r, rate in [
        ("baseline: one at a time, `generate` after PEFT `set_adapter`", base_res, b_tps),
        (f"PEFT mixed-adapter batch: one `generate` of {args.clients}, `adapter_names=`", peft, p_tps),
        (f"tunegate engine: {args.clients} concurrent streams, mixed adapters", eng, e_tps),
        ("same, the burst prefilled in one forward (`prefill_group_rows=0`)", eng_whole, tps(eng_whole)),
    ]:
        lone = f"{r['lone_ttft']:.3f}" if "lone_ttft" in r else "-"
        print(
            f"| {name} | {r['tokens']} | {r['wall']:.2f} | {rate:.1f} | {r['tokens'] / r['cpu']:.1f} | {percentile(r['ttft'], 0.5):.3f} | "
            f"{percentile(r['ttft'], 0.95):.3f} | {lone} |"
        )
    ratio = e_tps / b_tps
    ttft_ratio = percentile(eng["ttft"], 0.5) / eng["lone_ttft"]
    cpu_ratio = (eng["tokens"] / eng["cpu"]) / (base_res["tokens"] / base_res["cpu"])
    print(f"\nper CPU-second (less sensitive to other tenants of the machine): {cpu_ratio:.2f}x the baseline")
    print(f"throughput: {ratio:.2f}x the baseline (target >= 6x): {'PASS' if ratio >= 6 else 'MISS'}")
    print(
        f"throughput: {e_tps / p_tps:.2f}x PEFT's mixed-adapter batch (target > 1x): {'PASS' if e_tps > p_tps else 'MISS'}"
    )
    print(
        f"p50 TTFT under load / lone-request TTFT: {ttft_ratio:.2f}x (target <= 3x): "
        f"{'PASS' if ttft_ratio <= 3 else 'MISS'}"
    )
    print(
        f"all rounds, aggregate tok/s: baseline {[round(tps(r), 1) for r in base_runs]}, "
        f"PEFT batch {[round(tps(r['peft_batch']), 1) for r in base_runs]}, engine {[round(tps(r), 1) for r in eng_runs]}, "
        f"engine with whole-burst prefill {[round(tps(r), 1) for r in whole_runs]}"
    )
    print(f"engine counters (best round): {eng['stats']}")


if __name__ == "__main__":
    main()
