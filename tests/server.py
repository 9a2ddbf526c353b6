"""A real `tunegate serve` on a free port, for tests that talk to it with the official SDK."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.env = {**os.environ, **(env or {}), "TUNEGATE_DATA_DIR": str(data_dir), "TUNEGATE_PORT": str(self.port)}
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "server.log"

    def start(self, timeout: float = 120, attempts: int = 3) -> RunningServer:
        """Start and wait for health; a lost race for the free port is retried on a new port."""
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError:
                if attempt == attempts - 1 or "address already in use" not in self.log_path.read_text():
                    raise
                self.stop()
                self.port = free_port()
                self.url, self.base_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.port}/v1"
                self.env["TUNEGATE_PORT"] = str(self.port)
                self.log_path.write_text("")
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> RunningServer:
        if self.proc and self.proc.poll() is None:
            # A second start would lose the running process's handle and leak it past the test.
            raise AssertionError(f"the server on port {self.port} is already running: stop it first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunegate.cli.main", "serve", "--log-level", "warning"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    time.sleep(0.5)  # a server that lost the port race answers nothing of its own: make sure
                    if self.proc.poll() is None:  # it is ours that answered and that it keeps running
                        return self
                    raise RuntimeError(f"server exited after start:\n{self.log_path.read_text()[-4000:]}")
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-4000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def create_key(self, org: str, admin: bool = False) -> str:
        cmd = [sys.executable, "-m", "tunegate.cli.main", "keys", "create", "--org", org] + (
            ["--admin"] if admin else []
        )
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    def client(self, key: str):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=600)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


FINISHED = ("succeeded", "failed", "cancelled")


def wait_for_job(client, job_id: str, timeout: float, poll: float = 1.0):
    """Poll a job through the official SDK until it finishes; fail the test after `timeout` seconds."""
    deadline = time.time() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in FINISHED:
        assert time.time() < deadline, f"job {job_id} did not finish within {timeout:.0f} s (status {job.status})"
        time.sleep(poll)
    return job
