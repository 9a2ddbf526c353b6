"""torch's intra-op threads per calling thread, and why no long-lived thread but the serving
engine's may hold an OpenMP pool.

Owns `prepare_serving_process` (one thread by default in a serving process), `intra_op_threads` (a
count for the calling thread only), `run_with_cores` (work on every core, in a thread that ends with
it), `run_sized` (one thread for a few texts, `run_with_cores` for more), `use_engine_threads` (a
serving engine's worker thread) and `cores`. Used by the CLI commands that serve, the engine, the
MiniLM users (moderation, the judge, graders) and the server's start-up steps; training workers get
their counts from their environment (`train/allocator.py`).

Why: two kinds of helper threads compete with the engine for the cores. numpy and scipy each bring
OpenBLAS, whose threads spin-wait after every multi-threaded call (the moderator's heads and
neighbour vote, run for every chat request, are numpy matmuls): set to one thread in a serving
process, they never start. And torch's CPU ops run on OpenMP (GNU libgomp; MKL on top of it). Every thread that runs a
multi-threaded op gets its own pool of OpenMP threads, kept until that thread exits. Once the
process holds more such threads than it has cores, libgomp stops spinning between parallel regions
and puts its threads to sleep after each one; a decode step is hundreds of small parallel regions,
and waking threads for each costs more than the arithmetic at these sizes. Measured on 2 cores, 16
streams over 4 adapters: in process, the engine ran at 162 tokens/s alone and at 98 tokens/s for the
rest of the process's life once any other live thread (a request handler's moderation batch, a
start-up step in the event loop's thread pool, a benchmark's baseline in the main thread) had run
one two-thread op. Through `tunegate serve` (HTTP and the `openai` SDK, each request moderated) the
burst took 13.7 s; with one OpenBLAS thread 8.4-9.2 s, with these defaults 8.7-8.9 s. So in a serving process one thread is every thread's
default (set before torch loads), the engine's worker thread uses the cores, and code that runs
MiniLM or loads a model outside the engine runs small work on one thread (`intra_op_threads(1)`:
also faster for a chat turn's few short texts) and large work in a short-lived thread
(`run_with_cores`), whose pool ends with it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def prepare_serving_process() -> bool:
    """In a process that serves (`tunegate serve`, `tunegate demo`), before torch is imported: one
    intra-op thread is every thread's default (unless the operator set these variables), so that no
    thread but the engine's holds an OpenMP pool; the engine's worker thread sets its own count
    (`use_engine_threads`). Returns False when torch or numpy was already loaded (a server started
    inside a test process): the engine's own count still applies, the others keep torch's default. An operator's
    `OMP_NUM_THREADS`/`MKL_NUM_THREADS` (either) or `OPENBLAS_NUM_THREADS` is left as set."""
    if {"torch", "numpy"} & set(sys.modules):
        return False
    # numpy's and scipy's OpenBLAS (their threads spin-wait after each call; the moderator's heads and
    # neighbour vote are numpy matmuls), then OpenMP and MKL (torch).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if not {"OMP_NUM_THREADS", "MKL_NUM_THREADS"} & set(os.environ):  # torch reads both; an operator's choice stands
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return True


def cores() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads for the calling thread only, restored after (the count is per thread,
    so the engine's forward passes keep theirs). None: leave it as it is."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_with_cores(fn: Callable[..., T], *args, threads: int | None = None, **kwargs) -> T:
    """`fn(*args, **kwargs)` with `threads` intra-op threads (default: every core) in a new thread
    that ends when it returns, so its OpenMP pool ends too (see module docstring). Re-raises."""
    result: list = []
    error: list[BaseException] = []

    def body() -> None:
        import torch

        torch.set_num_threads(threads or cores())
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    worker = threading.Thread(target=body, name="tunegate-cores", daemon=True)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


SMALL_WORK = 8  # items (texts of a few dozen tokens: a chat turn's messages) run on one thread in place


def run_sized(size: int, fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` for `size` items of small model work (MiniLM over texts): up to
    `SMALL_WORK` on one intra-op thread in the calling thread (splitting matmuls that small over two
    threads costs more in hand-offs than it gains, and on a busy machine each forward waits for its
    slowest thread: MiniLM per message beside a training job, p50 14 ms on one thread, 50 to 150 ms on
    two); more with the caller's thread count in a thread that ends with it (`run_with_cores`)."""
    if size <= SMALL_WORK:
        with intra_op_threads(1):
            return fn(*args, **kwargs)
    import torch

    return run_with_cores(fn, *args, threads=torch.get_num_threads(), **kwargs)


def use_engine_threads(configured: int | None) -> int:
    """In a serving engine's worker thread: its forward passes use `configured` threads (default:
    every core). Returns the count."""
    import torch

    n = configured or cores()
    torch.set_num_threads(n)
    return n
