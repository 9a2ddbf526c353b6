"""Serving through the HTTP server: a burst of streaming clients against a real `tunegate serve`,
with the serving process's thread defaults (`src/tunegate/threads.py`) and, as the baseline in the
same run, with two threads for every library as a process had before them.

Each variant starts its own `tunegate serve` on a free port (fresh data directory, the converted
model cache, no training workers), warms up with one request, then sends `--clients` concurrent
streaming chat requests through the official `openai` SDK (greedy, `--tokens` new tokens each, EOS
ignored, every request moderated as usual), `--rounds` times, and prints the best round of each.

    python bench/serve_http.py [--clients 16] [--tokens 64] [--rounds 2] [--model-cache DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve import QUESTIONS  # bench/serve.py: the same 16 questions as the in-process burst

ROOT = Path(__file__).resolve().parents[1]
# What every thread of a serving process had before the serving defaults: both cores for each library.
TWO_THREADS = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_cache: Path, extra: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    port, data = free_port(), tempfile.mkdtemp(prefix="tg-http-")
    env = {k: v for k, v in os.environ.items() if k not in TWO_THREADS}
    env |= {"TUNEGATE_DATA_DIR": data, "TUNEGATE_MODEL_CACHE_DIR": str(model_cache), "TUNEGATE_START_WORKERS": "false"}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunegate.cli.main", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    for _ in range(600):
        time.sleep(0.5)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1", (Path(data) / "admin_key").read_text().strip()
        except (httpx.HTTPError, OSError):
            pass
    proc.kill()
    raise SystemExit("the server did not start")


async def burst(base_url: str, key: str, model: str, questions: list[str], tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)

    async def one(question: str, max_tokens: int, t0: float) -> tuple[float | None, int]:
        first, usage = None, 0
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - t0
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return first, usage

    await one("Hello", 2, time.perf_counter())  # warm-up: the first request loads the model
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(q, tokens, t0) for q in questions))
    wall = time.perf_counter() - t0
    await client.close()
    ttft = sorted(r[0] or wall for r in results)
    return {"wall": wall, "tokens": sum(r[1] for r in results), "ttft_p50": ttft[len(ttft) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--model-cache", type=Path, default=ROOT / ".tunegate" / "models")
    args = ap.parse_args()
    questions = (QUESTIONS * (args.clients // len(QUESTIONS) + 1))[: args.clients]
    variants = {
        "two threads for every library in every thread (before)": TWO_THREADS,
        "serving defaults: one thread outside the engine (now)": {},
    }
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for label, extra in variants.items():  # alternated, so that a noisy minute hits both
            proc, url, key = start(args.model_cache, extra)
            try:
                run = asyncio.run(burst(url, key, args.model, questions, args.tokens))
            finally:
                proc.terminate()
                proc.wait(30)
            print(f"  {label}: {run['wall']:.2f} s", flush=True)
            if label not in best or run["wall"] < best[label]["wall"]:
                best[label] = run
    print(
        f"\n`tunegate serve`, {args.clients} streaming clients via the openai SDK, {args.tokens} tokens each, "
        f"{os.cpu_count()} cores, best of {args.rounds} rounds\n"
    )
    print("| server | wall (s) | output tokens | tok/s | TTFT p50 (s) |")
    print("|---|---:|---:|---:|---:|")
    for label, r in best.items():
        print(f"| {label} | {r['wall']:.2f} | {r['tokens']} | {r['tokens'] / r['wall']:.1f} | {r['ttft_p50']:.3f} |")
    before, now = (best[label]["wall"] for label in variants)
    print(f"\nnow / before: {before / now:.2f}x the throughput")


if __name__ == "__main__":
    main()
