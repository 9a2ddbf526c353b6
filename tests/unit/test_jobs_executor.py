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


def test_workers_get_the_servers_settings_even_those_given_in_code(tmp_path, monkeypatch):
    """Settings built in code (not from the environment) reach the worker process whole; the
    environment of the worker cannot change them."""
    from tunegate.jobs.executor import LocalExecutor
    from tunegate.settings import Settings

    monkeypatch.setenv("TUNEGATE_MAX_JOB_RETRIES", "9")  # what a worker rebuilding Settings() would read
    settings = Settings(
        data_dir=tmp_path / "d",
        base_models={"tiny": tmp_path / "m"},
        max_job_retries=0,
        keep_checkpoints=7,
        moderator="http",
        torch_threads=1,
    )
    env = LocalExecutor(settings).worker_environment()
    probe = "from tunegate.settings import Settings; s = Settings.from_worker_env(); print(s.model_dump_json())"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert Settings.model_validate_json(out.stdout) == settings
