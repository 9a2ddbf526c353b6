"""Where files, adapters, checkpoints and reports live: the storage every process of one service
shares (the API servers and every training worker, on whichever node it runs).

Owns the storage root as every process must see it (the stages still build their paths from
`Settings.files_dir` / `artifacts_dir` under it), the absolute paths handed to workers, and the
storage's identity: a marker (`storage.json`, a random
id) written once at the root, which a worker on another node checks before it reads a training
file or writes a checkpoint, so a node that does not mount the shared storage fails the job with a
message naming the path instead of training into a local folder nobody else sees.

Two kinds, one implementation (`FileStorage`), since both are a POSIX path: the data directory on
local disk (the default, one machine) and a shared filesystem (NFS, CephFS, a cloud file share)
that every node mounts at the same path. An object store (S3) is not implemented: see the README's
deployment guide. Does not own which rows point at these files (files/, jobs/, models/).
"""

from tunegate.storage.local import MARKER, FileStorage, StorageNotShared

__all__ = ["MARKER", "FileStorage", "StorageNotShared"]
