"""Object ids with OpenAI's prefixes (`file-`, `ftjob-`, `ftevent-`, `ftckpt-`, `chatcmpl-`, `modr-`)."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}-{secrets.token_hex(nbytes)}"


def now() -> int:
    return int(time.time())
