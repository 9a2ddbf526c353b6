"""Benchmark of dataset validation (issue 2): lines/s, peak RSS, and time against the floor.

The floor, measured in the same run on the same file: parsing every line with `json.loads`, plus
one batched fast-tokenizer pass (batches of 256, no offsets) over the texts the validator has to
tokenize, i.e. every example rendered with the model's chat template (rendered beforehand, outside
the timed part). Any validator that counts real tokens must at least parse and tokenize, so
`validate / floor` is the overhead of everything else: the checks, rendering, duplicate detection,
loss-mask spans and statistics. Target: <= 1.3x, and a peak RSS that does not grow with the file.

Each variant runs in its own subprocess (fresh interpreter, tokenizer loaded before the clock
starts) and reports its own peak RSS; variants alternate and the best of `--rounds` is kept, since
these machines are noisy. Prints a markdown table.

    python bench/validate.py [--examples 100000] [--small 25000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = Path(os.environ.get("TUNEGATE_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))
WORDS = [
    "the",
    "a",
    "an",
    "model",
    "data",
    "train",
    "token",
    "chat",
    "example",
    "assistant",
    "user",
    "system",
    "reply",
    "question",
    "answer",
    "how",
    "why",
    "what",
    "when",
    "where",
    "python",
    "code",
    "value",
    "list",
    "file",
    "line",
    "report",
    "weather",
    "city",
    "river",
    "mountain",
    "bread",
    "coffee",
    "music",
    "because",
    "however",
    "therefore,",
    "quickly.",
    "slowly!",
    "maybe?",
    "42",
    "2024",
    "3.14",
    "naïve",
    "café",
]


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    return " ".join(words).capitalize() + "."


def example(rng: random.Random, i: int) -> dict:
    """Multi-turn chat, some with tool calls and weights: ~100-250 tokens, like typical SFT data."""
    messages = [{"role": "system", "content": f"You are assistant number {i % 50}. " + sentence(rng, 3, 10)}]
    if i % 10 == 0:
        messages += [
            {"role": "user", "content": sentence(rng, 5, 20)},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": json.dumps({"query": sentence(rng, 2, 6), "n": i})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": f"call_{i}", "content": sentence(rng, 5, 15)},
        ]
    for turn in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": sentence(rng, 5, 30)})
        reply = {"role": "assistant", "content": sentence(rng, 5, 45) + f" (#{i}.{turn})"}
        if i % 4 == 0:
            reply["weight"] = turn % 2
        messages.append(reply)
    return {"messages": messages}


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps(example(rng, i), ensure_ascii=False) + "\n")


# -- child process: one variant, timed, with its own peak RSS -----------------------------------------


def child(variant: str, data: Path, texts: Path | None) -> dict:
    from tunegate.catalog import DEFAULT_MODEL, load_tokenizer

    tokenizer = load_tokenizer(MODEL_CACHE / DEFAULT_MODEL)
    tokenizer("warm up", add_special_tokens=False)
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "floor":
        with open(data, "rb") as f:
            for line in f:
                json.loads(line)
        with open(texts) as f:
            batch = []
            for line in f:
                batch.append(json.loads(line))
                if len(batch) == 256:
                    tokenizer(batch, add_special_tokens=False, return_attention_mask=False)
                    batch = []
            if batch:
                tokenizer(batch, add_special_tokens=False, return_attention_mask=False)
    else:
        from tunegate.files.validate import validate_file

        report = validate_file(data, tokenizer=tokenizer if variant == "validate" else None, context_length=8192)
        assert report.valid, report.errors[:3]
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "ready_rss_kib": rss_ready,
    }


def render_texts(data: Path, out: Path) -> None:
    """The texts the validator tokenizes: each example rendered with the model's template (untimed)."""
    from tunegate.catalog import DEFAULT_MODEL, load_tokenizer
    from tunegate.catalog.template import render_with_spans

    tokenizer = load_tokenizer(MODEL_CACHE / DEFAULT_MODEL)
    with open(data) as f, open(out, "w") as g:
        for line in f:
            g.write(json.dumps(render_with_spans(tokenizer, json.loads(line)["messages"]).text) + "\n")


def run_child(variant: str, data: Path, texts: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(data), str(texts)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=25_000, help="second, smaller file to show RSS does not grow")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        variant, data, texts = args.child
        print(json.dumps(child(variant, Path(data), Path(texts))))
        return

    from tunegate.catalog.registry import DEFAULT_MODEL, resolve_path
    from tunegate.settings import Settings

    resolve_path(DEFAULT_MODEL, Settings(model_cache_dir=MODEL_CACHE, data_dir=MODEL_CACHE.parent))
    variants = ["floor", "validate", "structure"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.examples):
            data, texts = Path(tmp) / f"data-{n}.jsonl", Path(tmp) / f"texts-{n}.jsonl"
            generate(data, n)
            render_texts(data, texts)
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for v in variants:
                    r = run_child(v, data, texts)
                    if v not in best or r["seconds"] < best[v]["seconds"]:
                        best[v] = r
            floor = best["floor"]["seconds"]
            for v in variants:
                r = best[v]
                rows.append(
                    (
                        v,
                        n,
                        data.stat().st_size,
                        r["seconds"],
                        n / r["seconds"],
                        r["seconds"] / floor,
                        r["peak_rss_kib"] / 1024,
                        (r["peak_rss_kib"] - r["ready_rss_kib"]) / 1024,
                    )
                )
    names = {
        "floor": "floor: json.loads + one batched tokenizer pass",
        "validate": "validate_file (all checks + token stats)",
        "structure": "validate_file without tokenizer (checks only)",
    }
    print(
        f"\nDataset validation, SmolLM2 tokenizer, {os.cpu_count()} CPUs, best of {args.rounds}, "
        f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}\n"
    )
    print("| variant | examples | file MiB | seconds | lines/s | x floor | peak RSS MiB | RSS growth during run MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for v, n, size, s, lps, ratio, rss, growth in rows:
        print(
            f"| {names[v]} | {n:,} | {size / 2**20:.1f} | {s:.1f} | {lps:,.0f} | {ratio:.2f} | {rss:.0f} | "
            f"{growth:.0f} |"
        )
    ratios = ", ".join(f"{n:,} examples {ratio:.2f}x" for v, n, _, _, _, ratio, _, _ in rows if v == "validate")
    print(f"\nvalidate / floor: {ratios} (target <= 1.3x)")


if __name__ == "__main__":
    main()
