"""`FileStorage`: the storage root on a POSIX path (local disk or a shared mount), its layout and
identity marker (see the package docstring)."""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from tunegate.errors import ConflictError
from tunegate.settings import Settings

MARKER = "storage.json"


class StorageNotShared(ConflictError):
    """This process does not see the storage the server writes to."""


@dataclass(frozen=True)
class FileStorage:
    root: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> FileStorage:
        return cls(Path(settings.data_dir).resolve())

    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def identity(self) -> str:
        """The storage's id, created on first use. Of several servers starting at once on one shared
        root, the first to create the marker wins (O_EXCL) and all read its id."""
        path = self.root / MARKER
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return self._read(path)
        with os.fdopen(fd, "w") as f:
            json.dump({"id": secrets.token_hex(16), "created_by": socket.gethostname()}, f)
        return self._read(path)

    @staticmethod
    def _read(path: Path) -> str:
        for _ in range(50):  # another server may be between creating the marker and writing it
            try:
                return json.loads(path.read_text())["id"]
            except (ValueError, KeyError):
                import time

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
