"""A real local Ray cluster for tests: a head node and a second node, each its own `ray start --block`
process (SIGTERM stops what each started), in a private temporary folder, on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.server import free_port


class RayCluster:
    def __init__(self, cpus_per_node: int = 1, env: dict[str, str] | None = None):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's unix socket paths must stay short: a folder directly under /tmp.
        self.tmp = Path(tempfile.mkdtemp(prefix="tgray", dir="/tmp"))
        self.cpus = cpus_per_node
        self.env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0"}
        self.procs: list[subprocess.Popen] = []
        self.ray = str(Path(sys.executable).with_name("ray"))

    def _start(self, *args: str, log: str) -> None:
        out = open(self.tmp / log, "ab")
        self.procs.append(
            subprocess.Popen(
                [self.ray, "start", "--block", f"--num-cpus={self.cpus}", "--object-store-memory=78643200", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def start(self, timeout: float = 180) -> RayCluster:
        self._start(
            "--head",
            f"--port={self.port}",
            "--include-dashboard=false",
            f"--temp-dir={self.tmp}",
            "--node-ip-address=127.0.0.1",
            log="head.log",
        )
        self._wait_nodes(1, timeout)
        self._start(f"--address={self.address}", "--node-ip-address=127.0.0.1", log="node.log")
        self._wait_nodes(2, timeout)
        return self

    def _wait_nodes(self, n: int, timeout: float) -> None:
        code = (
            "import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))" % self.address
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited ({p.returncode}):\n{self.logs()}")
            out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {n} nodes:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.tmp.glob("*.log"))

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
