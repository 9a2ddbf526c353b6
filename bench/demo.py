"""Demo benchmark: `tunegate demo` wall time end to end from a set-up machine, and where it goes.

Runs `tunegate demo --exit` in its own process on a fresh data directory (a new database, no files,
no jobs), with the base model cache that `scripts/setup.sh` leaves (converted once at set-up, with the
base model's answers to the after-training checks' fixed prompts; both done here first, untimed, when
missing: the demo pays only for its fine-tuned model's answers and its own prompts), and prints one table: the demo's own per-phase times (upload and
file validation, screening, training, the after-training steps with the safety gate, the batched
side-by-side comparison) and the wall time of the whole command, server start included.

    python bench/demo.py [--epochs N] [--model-cache DIR] [--target 180]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the demo job's epochs")
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=ROOT / ".tunegate" / "models",
        help="converted base models (scripts/setup.sh converts into ./.tunegate/models)",
    )
    parser.add_argument("--target", type=float, default=180.0, help="wall-time target in seconds")
    args = parser.parse_args()
    env = {
        **os.environ,
        "TUNEGATE_MODEL_CACHE_DIR": str(args.model_cache),
        "COLUMNS": "400",  # one line per message: the timings line is parsed below
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for step in ("tunegate.catalog.prepare", "tunegate.evals.prepare"):  # what scripts/setup.sh does
        t = time.monotonic()
        prep = subprocess.run([sys.executable, "-m", step], env=env, stdout=sys.stderr, stderr=sys.stderr)
        if prep.returncode:
            sys.exit(f"could not prepare the base model ({step}, exit {prep.returncode}; its output is above)")
        print(f"  set-up step {step}: {time.monotonic() - t:.0f} s (not part of the demo's time)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tunegate.cli.main", "demo", "--exit", "--port", str(free_port())]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            env={**env, "TUNEGATE_DATA_DIR": str(Path(tmp) / "data")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        for line in proc.stdout:  # echoed as it comes (to stderr), so a run stopped midway still shows how far it got
            lines.append(line)
            print(f"  demo [{time.monotonic() - start:5.0f} s] {line.rstrip()}", file=sys.stderr, flush=True)
        proc.wait()
        wall = time.monotonic() - start
        run = subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")
    if run.returncode:
        sys.exit(f"the demo failed (exit {run.returncode}):\n{run.stdout[-3000:]}")
    timings = re.search(r"^Timings: (.*)$", run.stdout, re.M)
    score = re.search(r"^Follows the taught format: (.*)$", run.stdout, re.M)
    share = re.search(r"^Safety gate: (.*)$", run.stdout, re.M)
    phases = dict(re.findall(r"([\w+ ]+?) (\d+) s(?:, |$)", timings.group(1))) if timings else {}
    load = os.getloadavg()[0]
    print(
        f"\n`tunegate demo --exit`{' --epochs ' + str(args.epochs) if args.epochs else ''}, fresh data dir, converted model cache; load average {load:.1f} on {os.cpu_count()} cores.\n"
    )
    print("| phase | seconds |")
    print("|---|---:|")
    for name, secs in phases.items():
        if name in ("safety gate", "regression check"):
            print(f"| - of which {name} | {secs} |")
        elif name != "total":
            print(f"| {name} | {secs} |")
    print(f"| server start and shutdown | {wall - float(phases.get('total', 0)):.0f} |")
    print(f"| **wall time of the command** | **{wall:.0f}** |")
    learned = re.search(r"base (\d+)/(\d+), fine-tuned (\d+)/(\d+)", score.group(1)) if score else None
    ok = bool(learned) and int(learned.group(3)) >= 0.75 * int(learned.group(4)) and int(learned.group(1)) == 0
    print(
        f"\nfollows the taught format: {score.group(1) if score else '?'} "
        f"(learned clearly: fine-tuned >= 75% and base 0 — {'PASS' if ok else 'MISS'})"
    )
    print(f"safety gate: {share.group(1) if share else '?'}")
    print(f"wall time {wall:.0f} s (target <= {args.target:.0f} s): {'PASS' if wall <= args.target else 'MISS'}")


if __name__ == "__main__":
    main()
