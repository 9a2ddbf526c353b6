"""Dataset validation: every problem of a fine-tuning file in one streaming pass.

Owns the rules for SFT chat files (`messages`) and DPO preference files (`input`,
`preferred_output`, `non_preferred_output`): each problem has a `code` (OpenAI's cookbook names
where they exist), a 1-based `line`, a `param` (JSON path inside the line) and a message saying how
to fix it. Memory stays bounded whatever the file size: lines are read one at a time, token counts
are kept as histograms, duplicate detection keeps 8-byte digests up to a cap, and the number of
problems listed per code is capped (the counts stay exact). It never raises on any input bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, Field

from tunegate.catalog.template import content_text, render_with_spans, tokenize_rendered
from tunegate.files.tokens import TokenCounter, TokenStats

MIN_EXAMPLES = 10
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_LISTED_PER_CODE = 50
MAX_DUPLICATE_DIGESTS = 500_000
BATCH = 512
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
CHAT_KEYS = {"messages", "tools", "parallel_tool_calls", "functions", "metadata"}
PREF_KEYS = {"input", "preferred_output", "non_preferred_output", "metadata"}
DEFAULT_CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>",
                          "<|start_header_id|>", "<|end_header_id|>", "[INST]", "[/INST]", "<s>", "</s>")


class Problem(BaseModel):
    code: str
    line: int | None = None
    param: str | None = None
    message: str


class ValidationReport(BaseModel):
    valid: bool
    format: str | None = Field(None, description="`chat` (SFT) or `preference` (DPO); None when undetectable.")
    n_examples: int
    n_lines: int = 0
    errors: list[Problem]
    warnings: list[Problem]
    error_counts: dict[str, int] = {}
    """Exact number of each error code (the list is capped per code)."""
    warning_counts: dict[str, int] = {}
    tokens: TokenStats | None = None


class _Collector:
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


def _lines(f) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw bytes) — None for a line over MAX_LINE_BYTES, which is skipped unread."""
    n = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield n, None
            continue
        yield n, raw


def control_tokens_of(tokenizer) -> tuple[str, ...]:
    if tokenizer is None:
        return DEFAULT_CONTROL_TOKENS
    toks = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(tok, "special", False):
            toks.add(str(tok))
    return tuple(sorted(t for t in toks if len(t) > 2)) or DEFAULT_CONTROL_TOKENS


def validate_file(path: Path | str, *, tokenizer=None, context_length: int | None = None) -> ValidationReport:
    """Validate a JSONL fine-tuning file. With a tokenizer, token statistics use its chat template."""
    out = _Collector()
    control = control_tokens_of(tokenizer)
    counter = TokenCounter(context_length) if tokenizer is not None else None
    pending: list[tuple[int, list[dict]]] = []
    digests: dict[bytes, int] = {}
    file_format: str | None = None
    n_examples = n_lines = 0

    def flush() -> None:
        if counter is None or not pending:
            return
        rendered = [render_with_spans(tokenizer, msgs) for _, msgs in pending]
        for (line, _), tok in zip(pending, tokenize_rendered(tokenizer, rendered)):
            if counter.add(len(tok.input_ids), tok.loss_mask):
                out.warn("example_truncated", line, None,
                         f"This example has {len(tok.input_ids)} tokens, more than the model's context of "
                         f"{context_length}; it will be truncated. Shorten it or split the conversation.")
        pending.clear()

    try:
        f = open(path, "rb")
    except OSError as exc:
        out.error("unreadable_file", None, None, f"The file cannot be read ({exc.strerror}). Upload it again.")
        return _report(out, None, 0, 0, None)
    with f:
        for line_no, raw in _lines(f):
            n_lines = line_no
            if raw is None:
                out.error("line_too_long", line_no, None, f"This line is over {MAX_LINE_BYTES} bytes. Shorten the "
                          "example or split it.")
                continue
            if not raw.strip():
                out.error("blank_line", line_no, None, "Blank line. Remove it: every line must hold one JSON example.")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.error("invalid_utf8", line_no, None, f"Invalid UTF-8 at byte {exc.start} of this line. Save the "
                          "file as UTF-8.")
                continue
            try:
                example = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                col = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
                out.error("invalid_json", line_no, None, f"Invalid JSON{col}: {msg}. Each line must be one complete "
                          "JSON object (JSON Lines).")
                continue
            n_examples += 1
            if not isinstance(example, dict):
                out.error("data_type", line_no, None, f"Each example must be a JSON object, not "
                          f"{type(example).__name__}. Wrap it as {{\"messages\": [...]}}.")
                continue
            fmt = "preference" if "input" in example or "preferred_output" in example else "chat"
            if file_format is None:
                file_format = fmt
            elif fmt != file_format:
                out.error("mixed_formats", line_no, None, f"This example is in `{fmt}` format but the file started "
                          f"as `{file_format}`. Put SFT (`messages`) and DPO (`input`/`preferred_output`) data in "
                          "separate files.")
                continue
            msgs = (_check_chat if fmt == "chat" else _check_preference)(example, line_no, out, control)
            digest = hashlib.blake2b(json.dumps(example, sort_keys=True, ensure_ascii=False).encode(),
                                     digest_size=8).digest()
            if digest in digests:
                out.warn("duplicate_example", line_no, None, f"Same example as line {digests[digest]}. Duplicates "
                         "weigh those examples more; remove them unless that is intended.")
            elif len(digests) < MAX_DUPLICATE_DIGESTS:
                digests[digest] = line_no
            if msgs is not None and counter is not None:
                pending.append((line_no, msgs))
                if len(pending) >= BATCH:
                    flush()
        flush()
    if n_lines == 0:
        out.error("empty_file", None, None, "The file is empty. Upload JSONL with one example per line.")
    elif n_examples < MIN_EXAMPLES:
        out.error("too_few_examples", None, None, f"The file has {n_examples} example(s); fine-tuning needs at "
                  f"least {MIN_EXAMPLES} (50-100 good examples usually give clear improvements).")
    stats = counter.stats(n_examples) if counter is not None and counter.total else None
    return _report(out, file_format, n_examples, n_lines, stats)


def _report(out: _Collector, fmt, n_examples, n_lines, stats) -> ValidationReport:
    return ValidationReport(valid=not out.errors, format=fmt, n_examples=n_examples, n_lines=n_lines,
                            errors=out.errors, warnings=out.warnings, error_counts=dict(out.error_counts),
                            warning_counts=dict(out.warning_counts), tokens=stats)


def _check_content(m: dict, line: int, p: str, out: _Collector, control) -> bool:
    """Content: a string or a list of text parts; returns False when unusable."""
    content = m.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                out.error("data_type", line, f"{p}.content[{j}]", "Content parts must be {\"type\": \"text\", "
                          "\"text\": \"...\"}; images and audio cannot be trained here.")
                return False
    elif content is not None and not isinstance(content, str):
        out.error("data_type", line, f"{p}.content", f"`content` must be a string or a list of text parts, not "
                  f"{type(content).__name__}.")
        return False
    text = content_text(content)
    for tok in control:
        if tok in text:
            out.error("control_token_in_content", line, f"{p}.content", f"The content contains the template "
                      f"control token `{tok}`. Remove it: the chat template adds these itself, and a literal one "
                      "would break the conversation structure.")
            break
    return True


def _check_messages(messages: Any, line: int, out: _Collector, control, prefix: str = "messages",
                    require_assistant: bool = True) -> list[dict] | None:
    if not isinstance(messages, list) or not messages:
        out.error("missing_messages_list", line, prefix, f"`{prefix}` must be a non-empty list of messages like "
                  "[{\"role\": \"user\", \"content\": \"...\"}, {\"role\": \"assistant\", \"content\": \"...\"}].")
        return None
    ok = True
    call_ids: set[str] = set()
    roles = []
    for i, m in enumerate(messages):
        p = f"{prefix}[{i}]"
        if not isinstance(m, dict):
            out.error("data_type", line, p, "Each message must be an object with `role` and `content`.")
            ok = False
            continue
        for key in sorted(set(m) - MESSAGE_KEYS):
            out.error("message_unrecognized_key", line, f"{p}.{key}", f"Unrecognized key `{key}` in a message. "
                      f"Allowed: {', '.join(sorted(MESSAGE_KEYS))}.")
            ok = False
        role = m.get("role")
        roles.append(role)
        if "role" not in m:
            out.error("message_missing_key", line, f"{p}.role", "This message has no `role`. Add one of "
                      f"{', '.join(ROLES)}.")
            ok = False
        elif role not in ROLES:
            out.error("unrecognized_role", line, f"{p}.role", f"Unrecognized role `{str(role)[:40]}`. Use one of "
                      f"{', '.join(ROLES)}.")
            ok = False
        has_calls = bool(m.get("tool_calls") or m.get("function_call"))
        if "content" not in m and not has_calls:
            out.error("message_missing_key", line, f"{p}.content", "This message has no `content`. Add the text.")
            ok = False
        elif not _check_content(m, line, p, out, control):
            ok = False
        elif not content_text(m.get("content")).strip() and not has_calls:
            out.error("missing_content", line, f"{p}.content", "This message's content is empty. Write the text, "
                      "or drop the message.")
            ok = False
        if "weight" in m:
            if role != "assistant":
                out.error("weight_on_non_assistant", line, f"{p}.weight", "`weight` is only allowed on assistant "
                          "messages (it says whether that reply is trained). Remove it here.")
                ok = False
            elif m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                out.error("invalid_weight", line, f"{p}.weight", f"`weight` must be 0 or 1, not "
                          f"{json.dumps(m['weight'])[:20]}.")
                ok = False
        if "name" in m and not isinstance(m["name"], str):
            out.error("data_type", line, f"{p}.name", "`name` must be a string.")
            ok = False
        if m.get("tool_calls") is not None:
            ok &= _check_tool_calls(m["tool_calls"], line, f"{p}.tool_calls", out, call_ids, role)
        if role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str):
                out.error("message_missing_key", line, f"{p}.tool_call_id", "Tool messages need `tool_call_id`, "
                          "the id of the assistant tool call they answer.")
                ok = False
            elif tid not in call_ids:
                out.error("unknown_tool_call_id", line, f"{p}.tool_call_id", f"`tool_call_id` `{tid[:40]}` does not "
                          "match any earlier assistant tool call in this example. Use the id from `tool_calls`.")
                ok = False
    if require_assistant and "assistant" not in roles:
        out.error("example_missing_assistant_message", line, prefix, "The example has no assistant message: "
                  "there is nothing to learn. Add the reply the model should give.")
        ok = False
    if require_assistant and ok:
        if "user" not in roles:
            out.warn("missing_user_message", line, prefix, "No user message: the model learns replies without a "
                     "request. Add the user turn unless that is intended.")
        if "system" not in roles and "developer" not in roles:
            out.warn("missing_system_message", line, prefix, "No system message: the base model's default system "
                     "prompt is used. Add one if you will serve with a system prompt.")
    return messages if ok else None


def _check_tool_calls(calls: Any, line: int, p: str, out: _Collector, call_ids: set, role) -> bool:
    if role != "assistant":
        out.error("message_unrecognized_key", line, p, "Only assistant messages may carry `tool_calls`.")
        return False
    if not isinstance(calls, list):
        out.error("data_type", line, p, "`tool_calls` must be a list of {id, type: \"function\", function: "
                  "{name, arguments}}.")
        return False
    ok = True
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
            out.error("invalid_tool_call", line, f"{p}[{j}]", "Each tool call needs `id` (string), `type: "
                      "\"function\"` and `function` with `name` and `arguments` (a JSON string).")
            ok = False
            continue
        call_ids.add(c["id"])
    return ok


def _check_chat(example: dict, line: int, out: _Collector, control) -> list[dict] | None:
    for key in sorted(set(example) - CHAT_KEYS):
        out.error("example_unrecognized_key", line, key, f"Unrecognized top-level key `{key}`. Allowed: "
                  f"{', '.join(sorted(CHAT_KEYS))}.")
    if "messages" not in example:
        out.error("missing_messages_list", line, "messages", "The example has no `messages` list. Each line must "
                  "look like {\"messages\": [...]}.")
        return None
    for key in ("tools", "functions"):
        if key in example and not isinstance(example[key], list):
            out.error("data_type", line, key, f"`{key}` must be a list of tool definitions.")
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        out.error("data_type", line, "parallel_tool_calls", "`parallel_tool_calls` must be true or false.")
    msgs = _check_messages(example["messages"], line, out, control)
    return msgs if msgs is not None and not (set(example) - CHAT_KEYS) else None


def _check_preference(example: dict, line: int, out: _Collector, control) -> list[dict] | None:
    for key in sorted(set(example) - PREF_KEYS):
        out.error("example_unrecognized_key", line, key, f"Unrecognized top-level key `{key}` in a preference "
                  f"example. Allowed: {', '.join(sorted(PREF_KEYS))}.")
    inp = example.get("input")
    if not isinstance(inp, dict):
        out.error("message_missing_key" if inp is None else "data_type", line, "input", "`input` must be an object "
                  "with `messages` (the conversation so far, ending with a user turn).")
        prompt = None
    else:
        prompt = _check_messages(inp.get("messages"), line, out, control, "input.messages", require_assistant=False)
    outputs = {}
    for key in ("preferred_output", "non_preferred_output"):
        val = example.get(key)
        if val is None:
            out.error("message_missing_key", line, key, f"`{key}` is missing: a list with one assistant message.")
            continue
        msgs = _check_messages(val, line, out, control, key)
        if msgs is not None and (len(msgs) != 1 or msgs[0].get("role") != "assistant"):
            out.error("data_type", line, key, f"`{key}` must hold exactly one assistant message.")
            msgs = None
        outputs[key] = msgs
    if prompt is None or outputs.get("preferred_output") is None or outputs.get("non_preferred_output") is None:
        return None
    return prompt + outputs["preferred_output"]
