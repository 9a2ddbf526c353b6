"""Registry stage: trained adapters and checkpoints on disk (PEFT format + meta.json) and their export.

Owns reading a training run's artifacts (written by train/checkpoints.py, whose functions it
re-exports), loading an adapter onto its base model, and export (adapter copy, merged HF model,
tar.gz stream). Does not own the database rows that name these folders (jobs/) nor serving (serve/).
"""

from tunegate.registry.export import archive_adapter, export_adapter, export_merged
from tunegate.registry.store import base_model_path, is_adapter_dir, load_adapter_model, read_meta, verify_adapter
from tunegate.train.checkpoints import latest_checkpoint, list_checkpoints, prune_checkpoints, save_adapter

__all__ = [
    "archive_adapter",
    "base_model_path",
    "export_adapter",
    "export_merged",
    "is_adapter_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_adapter_model",
    "prune_checkpoints",
    "read_meta",
    "save_adapter",
    "verify_adapter",
]
