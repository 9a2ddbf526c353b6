"""Batch API benchmark: the same short chat requests sent through `/v1/batches` and sent concurrently
by clients, against a real `tunegate serve` on the real SmolLM2-135M-Instruct (or `--model tiny`, a
random 2-layer model on the real tokenizer), plus what a batch costs interactive traffic: the
latency of one short interactive request, idle and while the batch runs.

    python bench/batch.py [--requests 1000] [--tokens 8] [--clients 16] [--model smollm2-135m-instruct|tiny]

Both sides decode greedily exactly `--tokens` tokens (EOS ignored) from the same prompts. The batch
runs with the server's default `TUNEGATE_BATCH_CONCURRENCY` (8 lines at once, below the engine's
batch of 16, so interactive requests always find room): it is meant to be slower than a client that
takes the whole engine, and gentle on everyone else.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "What is the capital of France?",
    "Name a colour.",
    "Say hello.",
    "What is 3 plus 4?",
    "Name a fruit.",
    "What day comes after Monday?",
    "Name an animal.",
    "Spell cat.",
]


def body(i: int, model: str, tokens: int) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


async def concurrent(base_url: str, key: str, n: int, clients: int, model: str, tokens: int) -> float:
    import httpx

    queue = list(range(n))
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:

        async def client():
            while queue:
                i = queue.pop()
                while (r := await http.post("/chat/completions", json=body(i, model, tokens))).status_code == 429:
                    await asyncio.sleep(0.1)
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - start


def interactive_latency(client, model: str, tokens: int, count: int) -> list[float]:
    out = []
    for i in range(count):
        start = time.perf_counter()
        b = body(i, model, tokens)
        client.chat.completions.create(
            **{k: v for k, v in b.items() if k != "ignore_eos"}, extra_body={"ignore_eos": True}
        )
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()

    from tests.conftest import MODEL_CACHE, build_tiny_model
    from tests.server import RunningServer

    tmp = Path(tempfile.mkdtemp(prefix="tg-bench-batch-"))
    env = {"TUNEGATE_MODEL_CACHE_DIR": str(MODEL_CACHE)}
    if args.model == "tiny":
        from tunegate.catalog.registry import resolve_path
        from tunegate.settings import Settings

        smol = resolve_path("smollm2-135m-instruct", Settings(model_cache_dir=MODEL_CACHE, data_dir=tmp))
        env["TUNEGATE_BASE_MODELS"] = json.dumps({"tiny": str(build_tiny_model(tmp / "tiny", smol))})
    with RunningServer(tmp / "data", env) as srv:
        key = srv.create_key("bench")
        c = srv.client(key)
        interactive_latency(c, args.model, 2, 1)  # load the model
        idle = interactive_latency(c, args.model, args.tokens, 10)
        print(f"idle interactive p50 {statistics.median(idle):.3f} s", flush=True)

        wall_clients = asyncio.run(concurrent(srv.base_url, key, args.requests, args.clients, args.model, args.tokens))
        print(f"{args.clients} concurrent clients: {wall_clients:.1f} s", flush=True)  # in case the run is cut short

        lines = "".join(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body(i, args.model, args.tokens),
                }
            )
            + "\n"
            for i in range(args.requests)
        )
        f = c.files.create(file=("batch.jsonl", io.BytesIO(lines.encode())), purpose="batch")
        start = time.perf_counter()
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        time.sleep(2)
        during = interactive_latency(c, args.model, args.tokens, 10)
        done_then = c.batches.retrieve(b.id).request_counts.completed  # the batch must still be running
        print(
            f"interactive during the batch: p50 {statistics.median(during):.3f} s ({done_then} lines done)", flush=True
        )
        while (b := c.batches.retrieve(b.id)).status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.5)
        wall_batch = time.perf_counter() - start
        assert b.status == "completed" and b.request_counts.completed == args.requests, b

    tok = args.requests * args.tokens
    print(f"\n{args.requests} requests x {args.tokens} tokens, model `{args.model}`\n")
    print("| run | wall (s) | requests/s | output tok/s |")
    print("|---|---:|---:|---:|")
    print(
        f"| {args.clients} concurrent clients | {wall_clients:.1f} | {args.requests / wall_clients:.1f} | "
        f"{tok / wall_clients:.0f} |"
    )
    print(f"| Batch API (one batch) | {wall_batch:.1f} | {args.requests / wall_batch:.1f} | {tok / wall_batch:.0f} |")
    print("\n| interactive request | p50 latency (s) | max (s) |")
    print("|---|---:|---:|")
    print(f"| idle server | {statistics.median(idle):.3f} | {max(idle):.3f} |")
    print(f"| while the batch runs | {statistics.median(during):.3f} | {max(during):.3f} |")
    print(f"\n(the batch had finished {done_then} of {args.requests} lines when the interactive requests ended)")


if __name__ == "__main__":
    main()
