"""A throwaway PostgreSQL server for tests: its own data directory (initdb), its own free port, its
unix socket in a temporary folder, trust authentication, stopped and deleted at the end.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user the Debian
package creates (`runuser -u postgres`); the temporary folder is handed to that user. Binaries are
found on PATH or under /usr/lib/postgresql/*/bin (where Debian puts them); `scripts/setup.sh`
installs the package when it is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.server import free_port


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def unavailable_reason() -> str | None:
    """Why a PostgreSQL test server cannot start here, or None when it can."""
    for name in ("initdb", "pg_ctl"):
        if find_bin(name) is None:
            return f"PostgreSQL's `{name}` is not installed (bash scripts/setup.sh installs the `postgresql` package)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install -e '.[test]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` OS user to run the server as"
    return None


class PostgresServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tunegate-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, text=True, **kw)

    def start(self) -> PostgresServer:
        self._run("mkdir", "-p", str(self.socket_dir))
        self._run(
            find_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        # fsync off: a test database need not survive a power cut, and it makes commits cheap.
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        for attempt in range(3):
            try:
                self._run(
                    find_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "server.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.log()}") from None
                self.port = free_port()  # lost the port race: try another
                options = options.replace(options.split()[1], str(self.port), 1)
        return self

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text()[-4000:]
        except OSError:
            return ""

    def url(self, dbname: str = "postgres") -> str:
        # Over the unix socket in the temporary folder: no password, no clash with a system server.
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.socket_dir}&port={self.port}"

    def create_database(self, prefix: str = "tg") -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(find_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (subprocess.CalledProcessError, FileNotFoundError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_ready(url: str, timeout: float = 30) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    deadline = time.time() + timeout
    try:
        while True:
            try:
                with engine.connect() as c:
                    c.execute(text("select 1"))
                return
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()
