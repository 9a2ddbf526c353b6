"""JSON Lines, read and written in one way: blank lines skipped, UTF-8, files written atomically.

Owns reading whole JSONL files that the project ships or has already validated (packaged data,
a job's training file). Validating a user's upload line by line, with every problem reported, is
files/validate.py's job, not this module's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

INVALID: Any = object()
"""`numbered_jsonl`'s value for a line that is not JSON (never equal to a parsed value)."""


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[Any]:
    """The values of a JSONL file, one per non-blank line, streamed."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def numbered_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """(line number from 1, value) of every non-blank line, streamed; the value is `INVALID` where the
    line is not JSON, so each reader words its own error (with the line) or leaves the line to the
    file's own check."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except ValueError:
                    yield lineno, INVALID


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    return list(iter_jsonl(path))


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    """Write `rows` to `path` atomically (a reader never sees half a file)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out
