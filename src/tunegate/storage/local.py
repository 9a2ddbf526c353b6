"""`FileStorage`: the storage on a POSIX path (local disk or a shared mount), where a key is simply a
path under the root; its identity marker (see the package docstring)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tunegate.errors import ConflictError
from tunegate.settings import Settings

MARKER = "storage.json"


class StorageNotShared(ConflictError):
    """This process does not see the storage the server writes to."""


def _new_marker() -> bytes:
    return json.dumps({"id": secrets.token_hex(16), "created_by": socket.gethostname()}).encode()


@dataclass(frozen=True)
class FileStorage:
    """Keys are paths under `root`; every process sees the same bytes, so nothing moves."""

    root: Path
    kind = "file"

    @classmethod
    def from_settings(cls, settings: Settings) -> FileStorage:
        return cls(Path(settings.data_dir).resolve())

    # -- the interface every storage has (see the package docstring) --------------------------------

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, path: str | Path) -> str:
        """The key of a path under the root; a path elsewhere (or a key already) is returned as is."""
        p = Path(path)
        if not p.is_absolute():
            return str(p)
        try:
            return str(p.resolve().relative_to(self.root))
        except ValueError:
            return str(p)

    def local(self, stored: str | Path) -> Path:
        """Where a stored value (a key, or an absolute path written before keys) is on this machine."""
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    def fetch(self, stored: str | Path) -> Path:
        """The local path of a key, its bytes present; here they always are (or the path is missing)."""
        return self.local(stored)

    def push(self, path: str | Path, *, mirror: bool = False) -> None:
        """Make a local file or folder under the root durable in the storage: on a POSIX path it is."""

    def evict(self, stored: str | Path) -> None:
        """Forget a local copy (after it failed its integrity check): there is no copy here."""

    def remove(self, stored: str | Path) -> None:
        p = self.local(stored)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    # -- identity -------------------------------------------------------------------------------------

    def identity(self) -> str:
        """The storage's id, created on first use. Of several servers starting at once on one shared
        root, the first to create the marker wins (O_EXCL) and all read its id."""
        path = self.root / MARKER
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return self._read(path)
        with os.fdopen(fd, "wb") as f:
            f.write(_new_marker())
        return self._read(path)

    @staticmethod
    def _read(path: Path) -> str:
        for _ in range(50):  # another server may be between creating the marker and writing it
            try:
                return json.loads(path.read_text())["id"]
            except (ValueError, KeyError):
                time.sleep(0.1)
        raise StorageNotShared(f"The storage marker {path} is unreadable; delete it and restart the servers.")

    def verify(self, expected_id: str, where: str) -> None:
        """Raise `storage_not_shared` unless this process sees the storage whose id is `expected_id`."""
        path = self.root / MARKER
        try:
            found = json.loads(path.read_text()).get("id")
        except (OSError, ValueError):
            found = None
        if found != expected_id:
            raise StorageNotShared(
                f"{where} does not see the server's storage at {self.root} ("
                + ("no storage marker there" if found is None else "a different storage is mounted there")
                + "). Mount the shared data directory at the same path on every node "
                "(see the README's deployment guide).",
                param="TUNEGATE_DATA_DIR",
                code="storage_not_shared",
            )

    def worker_settings(self, settings: Settings) -> Settings:
        """The settings a worker on another machine gets: every storage path absolute, as the server
        resolved it (a relative `./.tunegate` would land in the remote worker's own directory)."""
        update: dict = {"data_dir": self.root}
        if settings.model_cache_dir is not None:
            update["model_cache_dir"] = Path(settings.model_cache_dir).resolve()
        return settings.model_copy(update=update)

    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"
