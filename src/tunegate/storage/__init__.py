"""Where files, adapters, checkpoints and reports live: the storage every process of one service
shares (the API servers and every training worker, on whichever node it runs).

Owns storage keys and moving bytes to and from them. A key is a relative name
(`files/<org>/<file>`, `artifacts/<job>/checkpoints/step-N`, `artifacts/<job>/adapter`,
`artifacts/<job>/gate_report.json`); database rows and worker arguments carry keys, never
absolute paths (rows written before keys carry absolute paths, still read as they are). Every
process has a local folder (its data dir; a worker's scratch folder with an object store) where
`local(key)` is; `fetch(key)` makes the bytes present there, `push(path)` makes a local file or
folder durable under its key, `evict` drops a local copy, `remove` deletes a key everywhere.

Two kinds, chosen by `TUNEGATE_STORAGE_URL` (`open_storage`):
- unset: `FileStorage`, the data directory on local disk (the default, one machine) or a shared
  filesystem (NFS, CephFS, a cloud file share) every node mounts at the same path; keys are paths
  under it, fetch and push move nothing. A marker (`storage.json`, a random id) at the root lets a
  worker on another node check it sees the same storage (`storage_not_shared` otherwise).
- `s3://bucket/prefix`: `ObjectStorage`, an S3-compatible object store through fsspec + s3fs
  (the `s3` extra), endpoint from `TUNEGATE_S3_ENDPOINT_URL`, credentials from the standard AWS
  variables. The data dir is then this server's local cache; workers use a scratch folder.
Does not own which rows point at these keys (files/, jobs/, models/).
"""

from __future__ import annotations

import threading
from pathlib import Path

from tunegate.settings import Settings
from tunegate.storage.local import MARKER, FileStorage, StorageNotShared
from tunegate.storage.objects import ObjectStorage, StorageUnavailable

Storage = FileStorage | ObjectStorage

_open: dict[tuple, Storage] = {}
_open_lock = threading.Lock()


def open_storage(settings: Settings) -> Storage:
    """The storage these settings name (one instance per process and configuration)."""
    key = (settings.storage_url, settings.s3_endpoint_url, str(Path(settings.data_dir).resolve()))
    with _open_lock:
        storage = _open.get(key)
        if storage is None:
            storage = (
                ObjectStorage.from_settings(settings) if settings.storage_url else FileStorage.from_settings(settings)
            )
            _open[key] = storage
        return storage


def job_key(job_id: str) -> str:
    """The key of a job's artifact folder: checkpoints, adapter, results.csv and the steps' reports."""
    return f"artifacts/{job_id}"


__all__ = [
    "MARKER",
    "FileStorage",
    "ObjectStorage",
    "Storage",
    "StorageNotShared",
    "StorageUnavailable",
    "job_key",
    "open_storage",
]
