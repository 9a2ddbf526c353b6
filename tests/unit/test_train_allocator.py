"""The worker environment really gives a new process jemalloc (when installed) and thread limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunegate.train.allocator import MALLOC_CONF, jemalloc_path, worker_env

_PROBE = (
    "import json, torch; from tunegate.train.allocator import allocator_in_use; "
    "print(json.dumps({'allocator': allocator_in_use(), 'threads': torch.get_num_threads()}))"
)


def _probe(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(jemalloc_path() is None, reason="libjemalloc2 is not installed (apt-get install libjemalloc2)")
def test_worker_started_with_the_env_runs_on_jemalloc_with_decay_off():
    env = worker_env(threads=1)
    assert env["MALLOC_CONF"] == MALLOC_CONF and env["LD_PRELOAD"].startswith(jemalloc_path())
    assert _probe(env) == {"allocator": "jemalloc", "threads": 1}


def test_without_the_allocator_the_worker_keeps_the_system_malloc():
    env = worker_env(threads=2, allocator=False)
    assert "LD_PRELOAD" not in env
    clean = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"allocator": "glibc", "threads": 2}


def test_the_setting_chooses_the_workers_allocator(tmp_path):
    """The local executor starts workers with glibc by default and with jemalloc when configured,
    and a server that itself runs under jemalloc does not pass it on to glibc workers."""
    from tunegate.jobs.executor import LocalExecutor
    from tunegate.settings import Settings

    glibc = LocalExecutor(Settings(data_dir=tmp_path, torch_threads=1))
    env = glibc.worker_environment()
    assert "jemalloc" not in env.get("LD_PRELOAD", "") and env["OMP_NUM_THREADS"] == "1"
    lib = jemalloc_path()
    if lib is None:
        pytest.skip("libjemalloc2 is not installed (apt-get install libjemalloc2)")
    os.environ["LD_PRELOAD"], os.environ["MALLOC_CONF"] = lib, MALLOC_CONF
    try:
        inherited = glibc.worker_environment()
        assert "jemalloc" not in inherited["LD_PRELOAD"] and "MALLOC_CONF" not in inherited
        assert _probe(inherited)["allocator"] == "glibc"
    finally:
        del os.environ["LD_PRELOAD"], os.environ["MALLOC_CONF"]
    jem = LocalExecutor(Settings(data_dir=tmp_path, torch_threads=1, worker_allocator="jemalloc")).worker_environment()
    assert jem["LD_PRELOAD"].startswith(lib) and jem["MALLOC_CONF"] == MALLOC_CONF
    assert _probe(jem) == {"allocator": "jemalloc", "threads": 1}
