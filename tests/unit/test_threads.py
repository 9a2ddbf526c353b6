"""Intra-op threads per calling thread (tunegate/threads.py): small work on one thread in place, larger
work in a thread that ends with it (so no long-lived thread keeps a pool beside the serving engine),
the engine thread's own count, and one thread as a serving process's default for torch, MKL and
numpy's OpenBLAS (checked in fresh processes: the variables only count before the libraries load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from tunegate.threads import (
    SMALL_WORK,
    cores,
    intra_op_threads,
    prepare_serving_process,
    run_sized,
    run_with_cores,
    use_engine_threads,
)


def _where() -> tuple[int, int]:
    return threading.get_ident(), torch.get_num_threads()


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_run_with_cores_runs_in_a_thread_of_its_own_and_re_raises(two_threads):
    ident, count = run_with_cores(_where, threads=3)
    assert ident != threading.get_ident() and count == 3
    assert run_with_cores(_where)[1] == cores()  # default: every core
    assert torch.get_num_threads() == 2  # the caller's count is untouched
    with pytest.raises(ZeroDivisionError):
        run_with_cores(lambda: 1 / 0)


def test_run_sized_keeps_small_work_in_place_on_one_thread(two_threads):
    assert run_sized(SMALL_WORK, _where) == (threading.get_ident(), 1)
    assert torch.get_num_threads() == 2  # restored after
    ident, count = run_sized(SMALL_WORK + 1, _where)
    assert ident != threading.get_ident() and count == 2  # larger: the caller's count, elsewhere
    with intra_op_threads(None):  # None leaves the count alone
        assert torch.get_num_threads() == 2


def test_the_engine_thread_sets_its_own_count():
    seen: list[tuple[int, int]] = []

    def engine(configured):
        n = use_engine_threads(configured)
        seen.append((n, torch.get_num_threads()))

    for configured in (3, None):
        t = threading.Thread(target=engine, args=(configured,))
        t.start()
        t.join()
    assert seen == [(3, 3), (cores(), cores())]


PROBE = """
import json, os, sys
from tunegate.threads import prepare_serving_process
applied = prepare_serving_process()
import numpy, torch
from threadpoolctl import threadpool_info
blas = [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"]
print(json.dumps({"applied": applied, "torch": torch.get_num_threads(), "openblas": blas,
                  "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}))
"""


def _probe(**env: str) -> dict:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_serving_process_defaults_to_one_thread_before_the_libraries_load():
    got = _probe()
    assert got["applied"] is True and got["torch"] == 1
    assert got["openblas"] and set(got["openblas"]) == {1}  # numpy's (and scipy's) OpenBLAS: no spinning helpers
    assert got["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # An operator's own setting wins.
    assert _probe(OMP_NUM_THREADS="2")["torch"] == 2
    assert _probe(OPENBLAS_NUM_THREADS="2")["openblas"] == [2] * len(got["openblas"])
    # Too late once torch is loaded (as in this test process): nothing is changed.
    assert prepare_serving_process() is False
