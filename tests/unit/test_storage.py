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


# --- the object store (a real S3 server: SeaweedFS, tests/s3.py) --------------------------------------


def _object_storage(s3_server, root: Path, prefix: str):
    from tunegate.storage import open_storage

    env = s3_server.env(prefix)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # botocore reads its chain
    return open_storage(
        Settings(data_dir=root, storage_url=env["TUNEGATE_STORAGE_URL"], s3_endpoint_url=s3_server.endpoint_url)
    )


def _objects(fs, prefix: str) -> list[str]:
    """The objects under a prefix (SeaweedFS also lists folder entries; an empty prefix lists itself)."""
    return sorted(o for o, info in fs.find(prefix, detail=True).items() if info.get("type") == "file")


def test_object_storage_pushes_fetches_and_mirrors_by_key(s3_server, tmp_path):
    server = _object_storage(s3_server, tmp_path / "server", "unit-a")
    worker = _object_storage(s3_server, tmp_path / "worker", "unit-a")
    server.check()
    ckpts = worker.local("artifacts/job1/checkpoints")
    for step in (1, 2):
        (ckpts / f"step-{step}").mkdir(parents=True)
        (ckpts / f"step-{step}" / "weights").write_bytes(bytes([step]) * 1000)
    (ckpts / ".step-3.tmp").mkdir()  # a save in progress: never uploaded
    (ckpts / ".step-3.tmp" / "weights").write_bytes(b"partial")
    worker.push(ckpts, mirror=True)
    fs, base = s3_server.fs(), f"{s3_server.bucket}/unit-a"
    assert _objects(fs, f"{base}/artifacts") == [
        f"{base}/artifacts/job1/checkpoints/step-1/weights",
        f"{base}/artifacts/job1/checkpoints/step-2/weights",
    ]
    # Another machine fetches a folder by key into its own local folder, whole.
    got = server.fetch("artifacts/job1/checkpoints/step-2")
    assert got == tmp_path / "server" / "artifacts/job1/checkpoints/step-2"
    assert (got / "weights").read_bytes() == bytes([2]) * 1000
    # The trainer pruned step-1: a mirrored push deletes its objects.
    import shutil

    shutil.rmtree(ckpts / "step-1")
    worker.push(ckpts, mirror=True)
    assert _objects(fs, f"{base}/artifacts") == [f"{base}/artifacts/job1/checkpoints/step-2/weights"]
    # A key with no object is a path that does not exist (callers answer "missing").
    assert not server.fetch("artifacts/job1/nothing").exists()
    # A damaged local copy is evicted and fetched again from the store.
    (got / "weights").write_bytes(b"damaged")
    server.evict("artifacts/job1/checkpoints/step-2")
    assert (server.fetch("artifacts/job1/checkpoints/step-2") / "weights").read_bytes() == bytes([2]) * 1000
    server.remove("artifacts/job1")
    assert not _objects(fs, base) and not (tmp_path / "server" / "artifacts/job1").exists()
    # Rows written before keys carry absolute paths: read where they are.
    assert server.fetch(str(tmp_path / "old")) == tmp_path / "old"


def test_object_storage_identity_and_worker_settings(s3_server, tmp_path):
    storage = _object_storage(s3_server, tmp_path / "server", "unit-b")
    expected = storage.identity()
    assert _object_storage(s3_server, tmp_path / "elsewhere", "unit-b").identity() == expected
    _object_storage(s3_server, tmp_path / "node", "unit-b").verify(expected, "Ray node 10.0.0.9")
    with pytest.raises(StorageNotShared, match="Ray node 10.0.0.9 does not reach") as other:
        _object_storage(s3_server, tmp_path / "node", "unit-other").verify(expected, "Ray node 10.0.0.9")
    assert other.value.param == "TUNEGATE_STORAGE_URL"
    settings = Settings(
        data_dir=tmp_path / "server",
        storage_url=f"s3://{s3_server.bucket}/unit-b",
        worker_scratch_dir=tmp_path / "scratch",
    )
    worker = storage.worker_settings(settings)
    # The worker keeps its copies in its own folder and reaches the server's database by URL.
    assert worker.data_dir == tmp_path / "scratch" and worker.db_url == settings.db_url


def test_unknown_scheme_and_unreachable_store_name_the_setting(s3_server, tmp_path):
    from tunegate.storage import StorageUnavailable, open_storage
    from tunegate.storage.objects import ObjectStorage

    with pytest.raises(StorageUnavailable, match="TUNEGATE_STORAGE_URL='ftp://x'"):
        open_storage(Settings(data_dir=tmp_path, storage_url="ftp://x"))
    from tests.server import free_port

    dead = ObjectStorage("s3://nowhere", tmp_path, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageUnavailable, match="is not reachable") as exc:
        dead.check()
    assert exc.value.param == "TUNEGATE_STORAGE_URL" and "TUNEGATE_S3_ENDPOINT_URL" in exc.value.message
    missing = ObjectStorage("s3://no-such-bucket-here/x", tmp_path, s3_server.endpoint_url)
    with pytest.raises(StorageUnavailable, match="bucket `no-such-bucket-here`"):
        missing.check()
