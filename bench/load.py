"""Load test: one request must not hurt everyone.

Starts a real `tunegate serve` on 127.0.0.1 (real SmolLM2-135M-Instruct, no training workers), then:

1. before: one probe client sends 2-token chat requests one after another (`--probe-seconds`);
2. storm: `--clients` asyncio clients (default 200) mix chat, streaming chat, small uploads and job
   listings for `--duration` seconds (default 120) while one client repeatedly sends the heaviest
   legal request (n=128, max_tokens up to the context, logprobs with top_logprobs=20, non-streaming,
   and gives up after 8 s), and the probe client keeps measuring its 2-token request.

Prints p50/p99 of the probe before and during, answers by status (and client-side failures), and
the server's RSS before, at peak and after. Target (issue 11): p99 during <= 5x before, no errors
other than 429, RSS flat. Traffic goes to 127.0.0.1 only; every client stops at the deadline and
after `--max-requests-per-client` requests.

    python bench/load.py [--clients 200] [--duration 120] [--probe-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "temperature": 0}
QUESTIONS = [
    "What is the capital of France?",
    "Give me a tip for sleeping better.",
    "Why is the sky blue?",
    "What is a prime number?",
    "How do I boil an egg?",
]
UPLOAD = b"".join(
    json.dumps(
        {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
    ).encode()
    + b"\n"
    for i in range(50)
)


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str, dict]:
    port = free_port()
    env = {
        **os.environ,
        "TUNEGATE_DATA_DIR": str(data_dir),
        "TUNEGATE_PORT": str(port),
        "TUNEGATE_HOST": "127.0.0.1",
        "TUNEGATE_START_WORKERS": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if os.environ.get("TUNEGATE_TEST_MODEL_CACHE"):
        env.setdefault("TUNEGATE_MODEL_CACHE_DIR", os.environ["TUNEGATE_TEST_MODEL_CACHE"])
    log = open(data_dir / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunegate.cli.main", "serve", "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit((data_dir / "server.log").read_text()[-3000:])
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, env
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


def make_key(env: dict, org: str, admin: bool = False) -> str:
    cmd = [sys.executable, "-m", "tunegate.cli.main", "keys", "create", "--org", org] + (["--admin"] if admin else [])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]


class Stats:
    def __init__(self):
        self.status: Counter = Counter()
        self.by_kind: Counter = Counter()

    def note(self, kind: str, status) -> None:
        self.status[status] += 1
        self.by_kind[(kind, status)] += 1


async def probe(
    client: httpx.AsyncClient, url: str, key: str, model: str, until: float, out: list[float], stats: Stats, cap: int
) -> None:
    for _ in range(cap):
        if time.monotonic() >= until:
            return
        t = time.perf_counter()
        try:
            r = await client.post(
                url + "/v1/chat/completions",
                json={**SMALL, "model": model},
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            )
            stats.note("probe", r.status_code)
            if r.status_code == 200:
                out.append(time.perf_counter() - t)
        except httpx.HTTPError as exc:
            stats.note("probe", type(exc).__name__)


async def worker(
    i: int, client: httpx.AsyncClient, url: str, keys: list[str], model: str, until: float, stats: Stats, cap: int
) -> None:
    rng = random.Random(i)
    key = keys[i % len(keys)]
    h = {"Authorization": f"Bearer {key}"}
    for _ in range(cap):
        if time.monotonic() >= until:
            return
        kind = rng.choice(["chat", "stream", "upload", "jobs"])
        try:
            if kind == "chat":
                r = await client.post(
                    url + "/v1/chat/completions",
                    headers=h,
                    timeout=120,
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
                        "max_tokens": 16,
                    },
                )
                status = r.status_code
            elif kind == "stream":
                async with client.stream(
                    "POST",
                    url + "/v1/chat/completions",
                    headers=h,
                    timeout=120,
                    json={
                        "model": model,
                        "stream": True,
                        "max_tokens": 16,
                        "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
                    },
                ) as r:
                    async for _ in r.aiter_bytes():
                        pass
                    status = r.status_code
            elif kind == "upload":
                r = await client.post(
                    url + "/v1/files",
                    headers=h,
                    timeout=120,
                    files={"file": ("load.jsonl", io.BytesIO(UPLOAD))},
                    data={"purpose": "fine-tune"},
                )
                status = r.status_code
            else:
                r = await client.get(url + "/v1/fine_tuning/jobs", headers=h, timeout=60)
                status = r.status_code
            stats.note(kind, status)
            if status == 429:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
        except httpx.HTTPError as exc:
            stats.note(kind, type(exc).__name__)


async def heavy(client: httpx.AsyncClient, url: str, key: str, model: str, until: float, stats: Stats) -> None:
    """The heaviest legal request, again and again, each abandoned after 8 s (as the issue's attacker did)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "n": 128,
        "max_tokens": 8000,
        "logprobs": True,
        "top_logprobs": 20,
    }
    while time.monotonic() < until:
        try:
            r = await client.post(
                url + "/v1/chat/completions", json=body, timeout=8, headers={"Authorization": f"Bearer {key}"}
            )
            param = r.json().get("error", {}).get("param") if r.status_code == 400 else None
            if param in ("n", "max_tokens"):  # over the server's bounds: step down to the largest legal request
                body[param] = max(1, int(body[param] * 0.5))
                stats.note("heavy", f"400 {param} (stepping down)")
                continue
            stats.note("heavy", r.status_code)
            if r.status_code >= 400:
                await asyncio.sleep(0.5)
        except httpx.TimeoutException:
            stats.note("heavy", "abandoned after 8 s")
        except httpx.HTTPError as exc:
            stats.note("heavy", type(exc).__name__)


async def run(args, url: str, pid: int, keys: list[str]) -> dict:
    limits = httpx.Limits(max_connections=args.clients + 16, max_keepalive_connections=args.clients + 16)
    async with httpx.AsyncClient(limits=limits) as client:
        warm = await client.post(
            url + "/v1/chat/completions",
            json={**SMALL, "model": args.model},
            timeout=300,
            headers={"Authorization": f"Bearer {keys[0]}"},
        )
        assert warm.status_code == 200, warm.text
        before: list[float] = []
        before_stats = Stats()
        rss = {"before": rss_mib(pid)}
        probe_key, heavy_key, keys = keys[0], keys[1], keys[2:]  # the probe and the heavy client have their own keys
        await probe(
            client, url, probe_key, args.model, time.monotonic() + args.probe_seconds, before, before_stats, 10_000
        )
        during: list[float] = []
        stats = Stats()
        until = time.monotonic() + args.duration
        peak = [rss_mib(pid)]

        async def sample():
            while time.monotonic() < until:
                peak.append(rss_mib(pid))
                await asyncio.sleep(2)

        await asyncio.gather(
            probe(client, url, probe_key, args.model, until, during, stats, 100_000),
            heavy(client, url, heavy_key, args.model, until, stats),
            sample(),
            *(
                worker(i, client, url, keys, args.model, until, stats, args.max_requests_per_client)
                for i in range(args.clients)
            ),
        )
        await asyncio.sleep(5)
        rss.update(peak=max(peak), after=rss_mib(pid))
    return {"before": before, "during": during, "stats": stats, "rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--probe-seconds", type=float, default=20.0)
    ap.add_argument("--max-requests-per-client", type=int, default=2000)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--keys", type=int, default=10, help="member keys the clients spread over")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-load-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        proc, url, env = start_server(data_dir)
        try:
            keys = [make_key(env, "probe"), make_key(env, "heavy")] + [
                make_key(env, f"load{k % 3}") for k in range(args.keys)
            ]
            result = asyncio.run(run(args, url, proc.pid, keys))
        finally:
            proc.terminate()
            proc.wait(30)
    b, d, stats, rss = result["before"], result["during"], result["stats"], result["rss"]
    p50b, p99b, p50d, p99d = (percentile(b, 0.5), percentile(b, 0.99), percentile(d, 0.5), percentile(d, 0.99))
    print(f"\n2-token probe ({args.model}), seconds")
    print("| phase  | requests | p50    | p99    |\n|---|---|---|---|")
    print(f"| before | {len(b):8d} | {p50b:6.3f} | {p99b:6.3f} |")
    print(f"| storm  | {len(d):8d} | {p50d:6.3f} | {p99d:6.3f} |")
    print(f"p99 during / before: {p99d / p99b:.1f}x (target <= 5x)")
    print(f"\nanswers during the storm ({args.clients} clients, {args.duration:.0f} s), by status:")
    for status, n in sorted(stats.status.items(), key=lambda kv: str(kv[0])):
        print(f"  {status}: {n}")
    print("by kind:", dict(sorted(((f"{k}:{s}", n) for (k, s), n in stats.by_kind.items()))))
    errors = {
        s: n
        for s, n in stats.status.items()
        if s not in (200, 429) and s != "abandoned after 8 s" and not str(s).endswith("(stepping down)")
    }
    print(f"errors other than 429: {sum(errors.values())} {errors or ''}")
    print(f"server RSS MiB: before {rss['before']:.0f}, peak {rss['peak']:.0f}, after {rss['after']:.0f}")


if __name__ == "__main__":
    main()
