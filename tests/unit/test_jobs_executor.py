"""The local executor's view of worker processes: a worker that has exited is not alive, even while
it is a zombie nobody has reaped (what an orphaned worker becomes inside a container whose PID 1
never reaps), so a restarted server re-queues its job instead of waiting on a dead process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tunegate.jobs.executor import _pid_alive


def test_running_process_is_alive_and_exited_zombie_is_not():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _pid_alive(proc.pid)
    finally:
        proc.kill()
    # Not reaped yet: the pid still exists as a zombie, and kill(0) still succeeds on it.
    deadline = time.time() + 10
    while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, 0)
    assert not _pid_alive(proc.pid)
    proc.wait()
    assert not _pid_alive(proc.pid)
    assert not _pid_alive(None) and not _pid_alive(0)
