"""Process environment for training workers: the memory allocator and thread settings.

Owns `worker_env()`, the environment the executor starts a worker with. Its variables must be set
before the worker process starts (LD_PRELOAD and OpenMP read them at load time), which is why
this is an environment and not a call inside the trainer. Does not start processes (jobs/).

Which allocator (the `worker_allocator` setting): with a padded trainer that computes the LM head
over every position, glibc maps and unmaps large tensors every step (millions of minor page faults)
and jemalloc with decay off is much faster. Our trainer packs without padding and projects only the
loss positions, so its tensors are smaller: measured with bench/train.py on the 2-core box, glibc is
7-10% faster (7.27 vs 7.99 and 7.51 vs 8.05 s/step in two runs) and jemalloc needs ~20% less peak
memory (5.1 vs 6.2-6.5 GiB). The default is glibc; jemalloc is the choice where memory is tight.
With its default decay settings jemalloc is worse than glibc, so preloading it always comes with
decay off. A worker runs one job and exits, so never returning memory to the system costs nothing.
"""

from __future__ import annotations

import glob
import os

from tunegate.threads import cores

MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_JEMALLOC_GLOBS = ("/usr/lib/*/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2")


def jemalloc_path() -> str | None:
    """Debian's `libjemalloc2` (apt-get install libjemalloc2), when installed."""
    for pattern in _JEMALLOC_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def worker_env(threads: int | None = None, *, allocator: bool = True) -> dict[str, str]:
    """The whole environment for a training worker: this process's, with the worker's settings.

    `threads`: torch/OpenMP threads (default: the CPUs this process may use).
    `allocator`: preload jemalloc with decay off when it is installed; otherwise the worker runs on
    glibc malloc even when this process itself was started under jemalloc.
    """
    n = str(threads or cores())
    env = {
        **os.environ,
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "TUNEGATE_TORCH_THREADS": n,
        # The tokenizer runs before training; its thread pool would only compete with torch's.
        "TOKENIZERS_PARALLELISM": "false",
    }
    inherited = env.pop("LD_PRELOAD", None)
    preload = [p for p in (inherited or "").split(":") if p and "jemalloc" not in p]
    env.pop("MALLOC_CONF", None)
    lib = jemalloc_path() if allocator else None
    if lib:
        preload.insert(0, lib)
        env["MALLOC_CONF"] = MALLOC_CONF
    if preload or inherited is not None:
        env["LD_PRELOAD"] = ":".join(preload)
    return env


def allocator_in_use() -> str:
    """'jemalloc' when this process runs with it preloaded (for logs and benchmark tables)."""
    try:
        with open("/proc/self/maps") as f:
            return "jemalloc" if "libjemalloc" in f.read() else "glibc"
    except OSError:
        return "unknown"
