"""`ObjectStorage`: files and artifacts in an S3-compatible object store (through fsspec + s3fs),
with a local folder on every machine holding copies (see the package docstring).

Keys map to objects `<bucket>/<prefix>/<key>` and to local copies `<root>/<key>`. Objects under a
key are written once and never rewritten (file bytes, a checkpoint, an adapter, a report), so a
local copy that exists is used without asking the store; a copy that fails its integrity check is
evicted by the caller and fetched again next time. Downloads land in a temporary name and are
renamed into place, so a reader never sees half a file or half a folder.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from tunegate.errors import ServerError
from tunegate.settings import Settings
from tunegate.storage.local import MARKER, StorageNotShared, _new_marker

SCHEMES = ("s3",)


class StorageUnavailable(ServerError):
    """The configured object store cannot be used (unknown scheme, missing package, unreachable)."""

    def __init__(self, message: str):
        super().__init__(message, param="TUNEGATE_STORAGE_URL", code="storage_unavailable")


def _split(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise StorageUnavailable(
            f"TUNEGATE_STORAGE_URL={url!r}: unsupported storage; use s3://BUCKET[/PREFIX] for an S3-compatible "
            "object store, or leave it unset for the data directory (local disk or a shared mount)."
        )
    base = rest.strip("/")
    if not base:
        raise StorageUnavailable(f"TUNEGATE_STORAGE_URL={url!r} names no bucket; use s3://BUCKET[/PREFIX].")
    return scheme, base


class ObjectStorage:
    kind = "s3"

    def __init__(self, url: str, root: Path, endpoint_url: str | None = None):
        scheme, self.base = _split(url)
        self.url, self.root, self.endpoint_url = url, Path(root).resolve(), endpoint_url
        self.bucket = self.base.split("/", 1)[0]
        try:
            import s3fs  # noqa: F401 - fsspec finds it by the scheme; imported here for a clear message
        except ImportError:
            raise StorageUnavailable(
                f"TUNEGATE_STORAGE_URL={url!r} needs s3fs: pip install 'tunegate[s3]' (or run scripts/setup.sh)."
            ) from None
        import fsspec

        # Credentials and region come from the standard AWS variables / files (botocore's chain).
        # Listings are never cached: other processes write to the same store.
        options: dict[str, Any] = {
            "use_listings_cache": False,
            "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}},
        }
        if endpoint_url:
            options["client_kwargs"] = {"endpoint_url": endpoint_url}
        self.fs = fsspec.filesystem(scheme, **options)
        self._pushed: dict[str, tuple[int, int]] = {}  # local file -> (size, mtime) when last uploaded
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStorage:
        return cls(settings.storage_url or "", Path(settings.data_dir), settings.s3_endpoint_url)

    def _remote(self, key: str) -> str:
        return f"{self.base}/{key}".rstrip("/")

    def check(self) -> None:
        """At start-up: the bucket exists and this process may list it."""
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        try:  # head_bucket raises on a dead endpoint or bad credentials (exists() would say False)
            self.fs.call_s3("head_bucket", Bucket=self.bucket)
            found = True
        except FileNotFoundError:
            found = False
        except Exception as exc:  # botocore/aiohttp raise many kinds; all mean the same to the operator
            raise StorageUnavailable(
                f"The object store TUNEGATE_STORAGE_URL={self.url!r}{where} is not reachable "
                f"({type(exc).__name__}: {exc}). Check TUNEGATE_S3_ENDPOINT_URL and the AWS credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."
            ) from None
        if not found:
            raise StorageUnavailable(
                f"The bucket `{self.bucket}` of TUNEGATE_STORAGE_URL={self.url!r}{where} does not exist "
                "(or these credentials may not see it); create it first."
            )
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, path: str | Path) -> str:
        p = Path(path)
        if not p.is_absolute():
            return str(p)
        try:
            return str(p.resolve().relative_to(self.root))
        except ValueError:
            raise ValueError(f"{p} is outside the storage's local folder {self.root}") from None

    def local(self, stored: str | Path) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    def fetch(self, stored: str | Path) -> Path:
        """The local copy of a key (a file or a folder), downloaded when this machine has none yet.
        A key with no object gives a path that does not exist; callers treat that as missing."""
        p = Path(stored)
        if p.is_absolute():  # written before keys, by a single-machine server: only ever local
            return p
        local = self.root / p
        if local.exists():
            return local
        remote = self._remote(str(p))
        try:
            # Only real objects: some stores also list folder entries (size 0, type directory).
            found = self.fs.find(remote, withdirs=False, detail=True)
        except FileNotFoundError:
            return local
        objects = [o for o, info in found.items() if info.get("type") == "file" and o.startswith(remote + "/")]
        single = not objects and found.get(remote, {}).get("type") == "file"
        if not objects and not single:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.part")
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        try:
            if single:
                self.fs.get_file(remote, str(tmp))
            else:
                for obj in objects:
                    dest = tmp / obj[len(remote) + 1 :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.fs.get_file(obj, str(dest))
        except FileNotFoundError:  # deleted while we read: as if it was never there
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            return local
        try:
            os.rename(tmp, local)  # a folder another thread finished first stays; ours goes
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            return local
        with self._lock:  # what was just fetched is in the store: a later push of its folder skips it
            for f in [local] if local.is_file() else [f for f in local.rglob("*") if f.is_file()]:
                st = f.stat()
                self._pushed[str(f)] = (st.st_size, st.st_mtime_ns)
        return local

    def push(self, path: str | Path, *, mirror: bool = False) -> None:
        """Upload a local file, or a folder's files, under their keys; files unchanged since this
        process last uploaded them are skipped. Names starting with "." (temporary saves) are not
        uploaded. `mirror`: objects under the folder's key with no local file are deleted (pruned
        checkpoints)."""
        local = self.local(path)
        key = self.key(local)
        if local.is_file():
            self._put(local, key)
            return
        if not local.is_dir():
            return
        present = set()
        files = sorted(
            f
            for f in local.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(local).parts)
        )
        # Manifests last: a reader that finds sha256.json finds the files it lists.
        for f in sorted(files, key=lambda f: f.name == "sha256.json"):
            rel = f.relative_to(local).as_posix()
            present.add(rel)
            self._put(f, f"{key}/{rel}")
        if mirror:
            remote = self._remote(key)
            try:
                found = self.fs.find(remote, detail=True)
            except FileNotFoundError:
                found = {}
            stale = [
                o
                for o, info in found.items()
                if info.get("type") == "file" and o.startswith(remote + "/") and o[len(remote) + 1 :] not in present
            ]
            if stale:
                self.fs.rm(stale)

    def _put(self, local: Path, key: str) -> None:
        st = local.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._pushed.get(str(local)) == stamp:
                return
        self.fs.put_file(str(local), self._remote(key))
        with self._lock:
            self._pushed[str(local)] = stamp

    def evict(self, stored: str | Path) -> None:
        p = Path(stored)
        if p.is_absolute():
            return
        local = self.root / p
        shutil.rmtree(local, ignore_errors=True) if local.is_dir() else local.unlink(missing_ok=True)

    def remove(self, stored: str | Path) -> None:
        p = Path(stored)
        if p.is_absolute():
            p.unlink(missing_ok=True)
            return
        self.evict(p)
        remote = self._remote(str(p))
        try:
            self.fs.rm(remote, recursive=True)
        except FileNotFoundError:
            pass

    def identity(self) -> str:
        """The store's id: a marker object written by the first server (S3 has no create-if-absent
        everywhere, so two servers starting in the same instant may both write; the last one wins
        and both read it back)."""
        marker = self._remote(MARKER)
        try:
            return json.loads(self.fs.cat_file(marker))["id"]
        except FileNotFoundError:
            self.fs.pipe_file(marker, _new_marker())
            return json.loads(self.fs.cat_file(marker))["id"]

    def verify(self, expected_id: str, where: str) -> None:
        try:
            found = json.loads(self.fs.cat_file(self._remote(MARKER))).get("id")
        except Exception:
            found = None
        if found != expected_id:
            raise StorageNotShared(
                f"{where} does not reach the server's object store {self.url} ("
                + ("no storage marker there" if found is None else "a different store")
                + "). Give every node the same TUNEGATE_STORAGE_URL, TUNEGATE_S3_ENDPOINT_URL and "
                "AWS credentials (see the README's deployment guide).",
                param="TUNEGATE_STORAGE_URL",
                code="storage_not_shared",
            )

    def worker_settings(self, settings: Settings) -> Settings:
        """A worker keeps its own local copies in a scratch folder (never the server's data dir, which
        may be on another machine) and reaches the database by the server's URL."""
        import tempfile

        scratch = settings.worker_scratch_dir or Path(tempfile.gettempdir()) / "tunegate-worker"
        update: dict = {"data_dir": Path(scratch).resolve(), "database_url": settings.db_url}
        if settings.model_cache_dir is not None:
            update["model_cache_dir"] = Path(settings.model_cache_dir).resolve()
        return settings.model_copy(update=update)
