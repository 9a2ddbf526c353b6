"""Dataset validation: every problem of a fine-tuning file in one streaming pass, and its report.

Owns `validate_file` and the report models. It reads the file line by line (never whole), decodes
and parses each line, dispatches to the structural rules of files/checks.py (SFT chat `messages`
or DPO `input`/`preferred_output`/`non_preferred_output`), finds repeated examples in fixed memory
(files/dedup.py) and hands clean examples to the token counter (files/tokens.py), which renders
them with the model's own chat template in batches. Each problem has a `code`, a 1-based `line`, a
`param` (JSON path inside the line, e.g. `messages[2].content`) and a message that says how to fix
it. Memory does not grow with the file: lines over MAX_LINE_BYTES are skipped unread, problems are
listed up to MAX_LISTED_PER_CODE per code (the counts stay exact), token lengths are kept as value
counts. It never raises on any input bytes. Does not own storing the report (files/service.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tunegate.catalog.template import with_tools
from tunegate.files.checks import PREFERENCE_KEYS, ExampleChecker, control_tokens_of
from tunegate.files.dedup import SeenLines
from tunegate.files.tokens import TokenCounter, TokenStats

MIN_EXAMPLES = 10  # OpenAI's minimum for a fine-tuning file
MAX_LINE_BYTES = 8 << 20  # no chat example is near this; a line over it is reported, not read
MAX_LISTED_PER_CODE = 50


class Problem(BaseModel):
    code: str = Field(description="Stable problem code, e.g. `missing_content` (OpenAI's cookbook names).")
    line: int | None = Field(None, description="1-based line of the file; null for the whole file.")
    param: str | None = Field(None, description="JSON path inside the line, e.g. `messages[2].content`.")
    message: str = Field(description="What is wrong and how to fix it.")


class ValidationReport(BaseModel):
    valid: bool = Field(description="True when there is no error (warnings do not block training).")
    format: Literal["chat", "preference"] | None = Field(
        None, description="`chat` (SFT `messages`) or `preference` (DPO); null when no line shows a format."
    )
    n_examples: int = Field(description="Non-blank lines: the examples the file holds.")
    n_lines: int = 0
    errors: list[Problem] = Field(description=f"Errors, at most {MAX_LISTED_PER_CODE} listed per code.")
    warnings: list[Problem] = Field(description=f"Warnings, at most {MAX_LISTED_PER_CODE} listed per code.")
    error_counts: dict[str, int] = Field(default_factory=dict, description="Exact number of each error code.")
    warning_counts: dict[str, int] = Field(default_factory=dict, description="Exact number of each warning code.")
    tokens: TokenStats | None = Field(None, description="Token statistics; null without a tokenizer.")


class _Collector:
    """Problems as they are found: exact counts per code, the first few of each listed."""

    def __init__(self):
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.error_counts: Counter = Counter()
        self.warning_counts: Counter = Counter()

    def error(self, code: str, line: int | None, param: str | None, message: str) -> None:
        self.error_counts[code] += 1
        if self.error_counts[code] <= MAX_LISTED_PER_CODE:
            self.errors.append(Problem(code=code, line=line, param=param, message=message))

    def warn(self, code: str, line: int | None, param: str | None, message: str) -> None:
        self.warning_counts[code] += 1
        if self.warning_counts[code] <= MAX_LISTED_PER_CODE:
            self.warnings.append(Problem(code=code, line=line, param=param, message=message))

    def add(self, code: str, line: int | None, param: str | None, message: str, is_error: bool) -> None:
        (self.error if is_error else self.warn)(code, line, param, message)


def _lines(f) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw bytes); None for a line over MAX_LINE_BYTES, which is skipped unread."""
    n = 0
    while raw := f.readline(MAX_LINE_BYTES + 1):
        n += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield n, None
        else:
            yield n, raw


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _json_error(exc: Exception, line: int) -> str:
    if isinstance(exc, json.JSONDecodeError):
        if line == 1 and exc.msg.startswith("Unexpected UTF-8 BOM"):
            return "The file starts with a byte order mark (BOM). Save it as UTF-8 without BOM."
        return (
            f"Invalid JSON at column {exc.colno}: {exc.msg}. Each line must hold one complete JSON object "
            "(JSON Lines): check quotes, commas and brackets, and that no example spans several lines."
        )
    if isinstance(exc, RecursionError):
        return "Invalid JSON: nested too deeply. Each line must hold one chat example."
    return f"Invalid JSON: {str(exc)[:200]}."


def validate_file(path: Path | str, *, tokenizer=None, context_length: int | None = None) -> ValidationReport:
    """Validate a JSONL fine-tuning file; with a tokenizer, count tokens with its chat template.

    Reports every problem in one pass and never raises on the file's contents."""
    out = _Collector()
    checker = ExampleChecker(out, control_tokens_of(tokenizer))
    counter = TokenCounter(tokenizer, context_length, out.add) if tokenizer is not None else None
    seen = SeenLines()
    file_format: str | None = None
    n_examples = n_lines = 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        out.error(
            "unreadable_file",
            None,
            None,
            f"The file cannot be read ({exc.strerror or exc}). Check the path and permissions, or upload it again.",
        )
        return _report(out, None, 0, 0, None)
    try:
        with f:
            for line, raw in _lines(f):
                n_lines = line
                if raw is None:
                    out.error(
                        "line_too_long",
                        line,
                        None,
                        f"The line is longer than {MAX_LINE_BYTES >> 20} MiB. "
                        "An example must fit the model's context: shorten it or split the conversation.",
                    )
                    n_examples += 1
                    continue
                body = raw.strip()
                if not body:
                    out.error(
                        "blank_line",
                        line,
                        None,
                        "Blank line. Remove it: every line must hold one JSON example (JSON Lines).",
                    )
                    continue
                n_examples += 1
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    out.error(
                        "invalid_utf8",
                        line,
                        None,
                        f"The line is not valid UTF-8 (byte {exc.start + 1} of "
                        "the line). Save the file with UTF-8 encoding.",
                    )
                    continue
                try:
                    example = json.loads(text)
                except (ValueError, RecursionError) as exc:
                    out.error("invalid_json", line, None, _json_error(exc, line))
                    continue
                if not isinstance(example, dict):
                    out.error(
                        "data_type",
                        line,
                        None,
                        f"Each line must be a JSON object like "
                        f'{{"messages": [...]}}, not {type(example).__name__ if example is not None else "null"}.',
                    )
                    continue
                # Escapes can decode to lone surrogates, which tokenizers (and UTF-8) reject.
                if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(json.dumps(example, ensure_ascii=False)):
                    out.error(
                        "invalid_unicode",
                        line,
                        None,
                        "The line has an unpaired surrogate escape "
                        "(\\ud800-\\udfff), which no tokenizer can encode. Escape emoji and other characters "
                        "as complete pairs, or write them as UTF-8.",
                    )
                    continue
                is_chat = "messages" in example
                is_pref = any(k in example for k in PREFERENCE_KEYS)
                fmt = "chat" if is_chat and not is_pref else "preference" if is_pref and not is_chat else None
                if is_chat and is_pref:
                    out.error(
                        "mixed_formats",
                        line,
                        None,
                        "The example has both `messages` (SFT) and "
                        "`input`/`preferred_output` (preference) keys. Use one format per example.",
                    )
                elif fmt is not None and file_format is not None and fmt != file_format:
                    out.error(
                        "mixed_formats",
                        line,
                        None,
                        f"This example is in `{fmt}` format but the file "
                        f"started in `{file_format}` format. Put SFT (`messages`) and preference "
                        "(`input`/`preferred_output`) data in separate files.",
                    )
                file_format = file_format or fmt
                check = checker.preference if (fmt or file_format) == "preference" else checker.chat
                messages = check(line, example, text)
                first = seen.first_line(body, line)
                if first is not None:
                    out.warn(
                        "duplicate_example",
                        line,
                        None,
                        f"This example is identical to line {first}. Remove "
                        "the copy unless you mean to weigh it double.",
                    )
                if messages is not None and counter is not None and (fmt is None or fmt == file_format):
                    tools = (example.get("input") if fmt == "preference" else example).get("tools")
                    counter.add(line, with_tools(messages, tools if isinstance(tools, list) else None))
            if seen.full:
                out.warn(
                    "duplicates_partly_checked",
                    None,
                    None,
                    f"Duplicates were looked for among the first "
                    f"{seen.size:,} distinct examples only (fixed memory); later repeats may be unreported.",
                )
            stats = counter.stats(n_examples) if counter is not None else None
    finally:
        seen.close()
    if n_examples == 0:
        out.error(
            "empty_file",
            None,
            None,
            "The file has no examples. Upload JSON Lines: one example per line, "
            'like {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}.',
        )
    elif n_examples < MIN_EXAMPLES:
        out.error(
            "too_few_examples",
            None,
            None,
            f"The file has {n_examples} example(s); fine-tuning needs at least "
            f"{MIN_EXAMPLES} (50 to 100 good examples usually give clear improvements).",
        )
    return _report(out, file_format, n_examples, n_lines, stats)


def _report(
    out: _Collector, fmt: str | None, n_examples: int, n_lines: int, stats: TokenStats | None
) -> ValidationReport:
    def order(p: Problem) -> tuple:  # whole-file problems first, then by line
        return (p.line is not None, p.line or 0)

    return ValidationReport(
        valid=not out.error_counts,
        format=fmt,
        n_examples=n_examples,
        n_lines=n_lines,
        errors=sorted(out.errors, key=order),
        warnings=sorted(out.warnings, key=order),
        error_counts=dict(out.error_counts),
        warning_counts=dict(out.warning_counts),
        tokens=stats if stats is not None and stats.n_examples else None,
    )
