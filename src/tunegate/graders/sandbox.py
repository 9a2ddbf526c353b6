"""Running a user's `python` grader: only when an admin enabled it, in a separate process with no
network, bounded memory, CPU time and file size, an empty working folder and a wall-clock timeout.

Owns starting that process and reading back one number. The child (this file run
by itself, `python -I sandbox.py`) first cuts itself off the network by entering new user and network
namespaces (an empty network namespace has no interface but a down loopback), sets its resource
limits, and only then reads the source and runs `grade(sample, item)`. If the namespaces cannot be
created on this machine the grader is refused, never run with network access.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MEMORY_BYTES = 512 * 1024 * 1024
MAX_OUTPUT = 64 * 1024


@dataclass
class SandboxResult:
    score: float | None
    error_type: str | None = None  # "runtime" (the user's code failed) or "server" (could not run it)
    details: str | None = None


def run_python_grader(source: str, sample: dict, item, timeout: float) -> SandboxResult:
    payload = json.dumps({"source": source, "sample": sample, "item": item})
    with tempfile.TemporaryDirectory(prefix="tg-grader-") as cwd:
        try:
            proc = subprocess.run(
                # This file alone, isolated (-I): the child needs only the standard library.
                [sys.executable, "-I", os.path.abspath(__file__), str(max(1, int(timeout)))],
                input=payload,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=cwd,
                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
            )
        except subprocess.TimeoutExpired:
            return SandboxResult(None, "runtime", f"The grader ran longer than {timeout:g} s and was stopped.")
    out = proc.stdout[-MAX_OUTPUT:].strip().splitlines()
    try:
        result = json.loads(out[-1]) if out else {}
    except ValueError:
        result = {}
    if "score" in result:
        return SandboxResult(float(result["score"]))
    if result.get("error_type"):
        return SandboxResult(None, result["error_type"], result.get("details"))
    tail = proc.stderr[-2000:].strip() or f"exit status {proc.returncode}"
    return SandboxResult(None, "runtime", f"The grader process ended without a score: {tail}")


def _isolate(cpu_seconds: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0 and libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "cannot create a network namespace")
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child() -> None:
    def answer(obj: dict) -> None:
        sys.stdout.write("\n" + json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        _isolate(int(sys.argv[1]))
    except Exception as exc:  # refuse rather than run with network access
        answer({"error_type": "server", "details": f"sandbox unavailable: {exc}"})
        return
    request = json.loads(sys.stdin.read())
    try:
        scope: dict = {"__name__": "grader"}
        exec(compile(request["source"], "<grader>", "exec"), scope)
        if not callable(scope.get("grade")):
            raise NameError("the source defines no function `grade(sample, item)`")
        score = float(scope["grade"](request["sample"], request["item"]))
    except BaseException as exc:  # the user's code: any failure is a runtime error of the grader
        answer({"error_type": "runtime", "details": f"{type(exc).__name__}: {exc}"[:2000]})
        return
    answer({"score": score})


if __name__ == "__main__":
    _child()
