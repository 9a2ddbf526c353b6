"""The storage root: one identity per storage (created once, even by servers starting together), a
worker that sees another storage (or none) refused with `storage_not_shared`, and worker settings
with absolute paths (a remote worker must not resolve `./.tunegate` in its own directory)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tunegate.settings import Settings
from tunegate.storage import MARKER, FileStorage, StorageNotShared


def test_identity_is_created_once_and_shared(tmp_path):
    storages = [FileStorage(tmp_path / "data") for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(FileStorage.identity, storages))
    assert len(ids) == 1 and (tmp_path / "data" / MARKER).is_file()
    assert FileStorage(tmp_path / "data").identity() in ids  # stable across restarts


def test_verify_accepts_the_same_storage_and_names_the_path_otherwise(tmp_path):
    shared = FileStorage(tmp_path / "shared")
    expected = shared.identity()
    FileStorage(tmp_path / "shared").verify(expected, "node a")  # the same mount: fine
    with pytest.raises(StorageNotShared) as missing:
        FileStorage(tmp_path / "not-mounted").verify(expected, "Ray node 10.0.0.7")
    assert missing.value.code == "storage_not_shared" and missing.value.status_code == 409
    assert "Ray node 10.0.0.7" in missing.value.message and str(tmp_path / "not-mounted") in missing.value.message
    assert "no storage marker" in missing.value.message
    other = FileStorage(tmp_path / "other")
    other.identity()
    with pytest.raises(StorageNotShared, match="a different storage"):
        other.verify(expected, "node b")


def test_worker_settings_carry_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=Path("./.tunegate"), model_cache_dir=Path("cache"))
    storage = FileStorage.from_settings(settings)
    worker = storage.worker_settings(settings)
    assert worker.data_dir == tmp_path / ".tunegate" and worker.data_dir.is_absolute()
    assert worker.model_cache_dir == tmp_path / "cache"
    monkeypatch.chdir(os.sep)  # where a Ray worker might run: the paths still point at the storage
    assert worker.artifacts_dir == tmp_path / ".tunegate" / "artifacts" == storage.artifacts_dir
    assert worker.files_dir == storage.files_dir
