"""A real local Ray cluster for tests: a head node and a second node, each its own `ray start --block`
process (SIGTERM stops what each started), in a private temporary folder, on a free port. The second
node can be killed whole (its `ray start`, raylet and worker processes, SIGKILL) and a fresh one
added, as when a machine of a cluster dies and is replaced."""

from __future__ import annotations

import json
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
        self.node_ids: list[str] = []  # Ray node ids, in the order the nodes joined (the head first)
        self.ray = str(Path(sys.executable).with_name("ray"))

    def _start(self, *args: str, log: str, cpus: int | None = None, prefix: tuple[str, ...] = ()) -> None:
        out = open(self.tmp / log, "ab")
        cpus = self.cpus if cpus is None else cpus
        self.procs.append(
            subprocess.Popen(
                [*prefix, self.ray, "start", "--block", f"--num-cpus={cpus}", "--object-store-memory=78643200", *args],
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
        self.add_node(timeout)
        return self

    def add_node(
        self, timeout: float = 180, cpus: int | None = None, resources: str | None = None, hide: Path | None = None
    ) -> str:
        """Start one more node process; returns its Ray node id. `hide`: the node runs in a mount
        namespace of its own where that folder is an empty one (a machine that lacks a shared mount);
        needs root. `resources`: Ray custom resources as JSON, to send a task to this node alone."""
        n = sum(1 for p in self.procs if p.poll() is None)
        prefix: tuple[str, ...] = ()
        if hide is not None:
            empty = Path(tempfile.mkdtemp(prefix="empty", dir=self.tmp))
            script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
            prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(empty), str(hide))
        extra = [f"--resources={resources}"] if resources else []
        self._start(
            f"--address={self.address}",
            "--node-ip-address=127.0.0.1",
            *extra,
            log=f"node{len(self.procs)}.log",
            cpus=cpus,
            prefix=prefix,
        )
        self._wait_nodes(n + 1, timeout)
        return self.node_ids[-1]

    def kill_node(self) -> None:
        """SIGKILL the last node added: its `ray start`, its raylet and every Ray worker on it. Ray's
        processes stay in the session `ray start` began (start_new_session), so the whole node goes."""
        proc = self.procs.pop()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _wait_nodes(self, n: int, timeout: float) -> None:
        code = (
            "import ray; ray.init(address=%r, logging_level='ERROR'); "
            "import json; print('NODES', json.dumps([x['NodeID'] for x in ray.nodes() if x['Alive']]))" % self.address
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited ({p.returncode}):\n{self.logs()}")
            out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
            # Ray may print warnings on stdout too (e.g. about a node it is losing)
            lines = [x for x in out.stdout.splitlines() if x.startswith("NODES ")]
            alive = json.loads(lines[-1].removeprefix("NODES ")) if out.returncode == 0 and lines else []
            new = [x for x in alive if x not in self.node_ids]
            if len(alive) == n and new:  # a killed node may still count as alive for a while
                self.node_ids += new
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
