"""Request text the server can encode: JSON may carry a lone UTF-16 surrogate (`"\\ud800"`), which
is a valid Python string but not valid Unicode, and fails later in a tokenizer, the moderator or the
database. Refused at the edge instead, naming the field."""

from __future__ import annotations

import re
from typing import Any

from tunegate.errors import InvalidRequestError

_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DEPTH = 32  # deeper JSON than any request of ours; deeper bodies are refused before recursion hurts


def check_text(value: Any, param: str = "", depth: int = 0) -> Any:
    """`value` unchanged, or an `InvalidRequestError` naming the first field with a lone surrogate
    (or nested deeper than `MAX_DEPTH`)."""
    if depth > MAX_DEPTH:
        raise InvalidRequestError(
            f"`{param or 'body'}` is nested more than {MAX_DEPTH} levels deep.",
            param=param or None,
            code="invalid_value",
        )
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise InvalidRequestError(
                f"`{param or 'body'}` contains a lone UTF-16 surrogate (e.g. \\ud800), which is "
                "not valid Unicode. Send valid UTF-8 text.",
                param=param or None,
                code="invalid_unicode",
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, param, depth + 1)
            check_text(v, f"{param}.{k}" if param else str(k), depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_text(v, f"{param}[{i}]", depth + 1)
    return value
