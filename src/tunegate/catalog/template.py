"""Render chat examples with the model's own chat template and find the trained (assistant) tokens.

This is the single place that turns `messages` into token ids and a loss mask, shared by dataset
validation (token statistics) and the trainer, so the two can never disagree.

How the mask is found with one render per example, for templates without `{% generation %}`
markers (SmolLM2's has none): every trained assistant content is wrapped in private sentinel
characters before rendering; after rendering the sentinels are cut out and their positions give
the character spans, extended over the end-of-turn token that the template writes right after
the content. Character spans become token masks through the fast tokenizer's offsets.

Model families differ in what their templates accept and write (catalog/features.py probes it):
a template without a system role gets the system message folded into the first user turn, one that
trims contents gets trained contents trimmed before they are marked, and the end-of-turn token
trained after each answer is the one the template writes (`<|eot_id|>`, `<end_of_turn>`, `<|end|>`),
not necessarily `eos_token`. The marked render is checked against the plain render every time, so
a template that edits contents in a way the marks cannot follow is an error, never a wrong mask.

Two fast paths, each proven equal to the general one by tests: plain ChatML templates (proven by
probe renders per tokenizer) are written directly, spans included, without Jinja or sentinels;
`count_rendered` gives the token counts of `tokenize_rendered` without building masks in Python.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import dataclass
from itertools import starmap
from operator import ge, itemgetter
from typing import Any

from tunegate.catalog.features import CONTENT_EDITS, adapt_messages, template_features
from tunegate.errors import InvalidRequestError

# Unicode private-use characters: never produced by tokenizers' normalisers, never in real chat data.
_OPEN = "\ue000"
_CLOSE = "\ue001"
_start = itemgetter(0)


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # character spans [start, end) that carry loss


@dataclass
class Tokenized:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is trained

    @property
    def n_trained(self) -> int:
        return sum(self.loss_mask)


def content_text(content: Any) -> str:
    """OpenAI content: a string, a list of `{"type": "text", "text": ...}` parts, or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


# --- tools: the project's convention -------------------------------------------------------------
# SmolLM2's template (like many small models') has no tool section, so training and serving share one
# convention for every base model: the tool definitions go into the system message, an assistant's
# calls are written as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (one per
# call, newline between), tool results are `tool` messages as the template renders them. Serving's
# grammar (`serve/structured.py`) produces exactly this text and `serve/tools.py` parses it. The
# convention is part of the template hash (`TOOL_CONVENTION`), so an adapter trained under another
# convention is refused like one trained on another template.
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
JSON_SEPARATORS = (", ", ": ")
TOOLS_HEADER = (
    "You can call these functions. To call one or more, answer with nothing but one block per call, "
    f'each on its own line: {TOOL_CALL_OPEN}{{"name": <function name>, "arguments": <JSON object>}}'
    f"{TOOL_CALL_CLOSE}\nFunctions:"
)
TOOL_CONVENTION = "tunegate-tools-v1\n" + TOOLS_HEADER


def tool_call_prefix(name: str) -> str:
    """The text of a call up to its arguments (the grammar forces it; the stream parser looks for it)."""
    return TOOL_CALL_OPEN + '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '


def render_tool_call(call: dict) -> str:
    """One OpenAI `tool_calls` entry (or legacy `function_call`) in the convention above."""
    fn = call.get("function", call) if isinstance(call, dict) else {}
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:  # validation reports this; render it as the string it is
            pass
    return (
        tool_call_prefix(str(fn.get("name", "")))
        + json.dumps(args, ensure_ascii=False, separators=JSON_SEPARATORS)
        + "}"
        + TOOL_CALL_CLOSE
    )


def with_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """`messages` with the tool definitions written into the system message (added when absent)."""
    if not tools:
        return messages
    lines = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False, separators=JSON_SEPARATORS) for t in tools)
    block = TOOLS_HEADER + "\n" + lines
    if messages and messages[0].get("role") in ("system", "developer"):
        first = dict(messages[0])
        first["content"] = content_text(first.get("content")) + "\n\n" + block
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def normalize_messages(
    messages: list[dict], *, mark_trained: bool, marks: tuple[str, str] = (_OPEN, _CLOSE), edit=None
) -> list[dict]:
    """Plain `{"role", "content"}` dicts the template understands; trained content gets sentinels
    (after `edit`, the whitespace edit the template itself makes to contents)."""
    out = []
    for m in messages:
        role = m.get("role")
        text = content_text(m.get("content"))
        if role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
            calls = m.get("tool_calls") or [{"type": "function", "function": m.get("function_call")}]
            text += ("\n" if text else "") + "\n".join(render_tool_call(c) for c in calls)
        if role == "function":
            role = "tool"
        if mark_trained and role == "assistant" and m.get("weight", 1) != 0:
            text = marks[0] + (edit(text) if edit else text) + marks[1]
        out.append({"role": role, "content": text})
    return out


_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
_CHATML_PROFILES: dict[tuple[int, str], str | None] = {}


def _chatml(messages: list[dict], default_system: str, add_generation_prompt: bool = False) -> str:
    head = default_system if not messages or messages[0]["role"] != "system" else ""
    body = "".join(f"{_IM_START}{m['role']}\n{m['content']}{_IM_END}\n" for m in messages)
    return head + body + (f"{_IM_START}assistant\n" if add_generation_prompt else "")


def chatml_default_system(tokenizer) -> str | None:
    """When the tokenizer's template is plain ChatML (SmolLM2's is), the text it inserts when a
    conversation has no system message; None when it is anything else. Proven by rendering probe
    conversations with the real Jinja template, once per tokenizer, so the fast path below can
    never disagree with the template."""
    key = (id(tokenizer), tokenizer.chat_template or "")
    if key in _CHATML_PROFILES:
        return _CHATML_PROFILES[key]
    profile = None
    try:
        plain = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}]
        full = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
            {"role": "tool", "content": "t"},
            {"role": "user", "content": " x\n"},
            {"role": "assistant", "content": ""},
        ]
        jinja = tokenizer.apply_chat_template(plain, tokenize=False)
        tail = _chatml(plain, "")
        if jinja.endswith(tail):
            candidate = jinja[: len(jinja) - len(tail)]
            if candidate == "" or (candidate.startswith(_IM_START + "system\n") and candidate.endswith(_IM_END + "\n")):
                ok = all(
                    tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=g)
                    == _chatml(m, candidate, g)
                    for m in (plain, full, plain[:1])
                    for g in (False, True)
                )
                profile = candidate if ok else None
    except Exception:  # any template that cannot render the probes simply uses Jinja
        profile = None
    _CHATML_PROFILES[key] = profile
    return profile


def _apply(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    default_system = chatml_default_system(tokenizer)
    if default_system is not None:  # ~10x faster than Jinja, identical output (see above)
        return _chatml(messages, default_system, add_generation_prompt)
    messages = adapt_messages(messages, template_features(tokenizer))
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    """The prompt text exactly as the model sees it (used for serving and the gate)."""
    return _apply(tokenizer, normalize_messages(messages, mark_trained=False), add_generation_prompt)


def _free_marks(text: str) -> tuple[str, str]:
    """Two private-use characters that `text` does not contain (the data itself may hold the usual ones)."""
    used = set(text)
    free = (c for c in map(chr, [*range(0xE002, 0xF900), *range(0xF0000, 0xFFFFE)]) if c not in used)
    return next(free), next(free)


def _chatml_with_spans(messages: list[dict], default_system: str, eos: str) -> Rendered:
    """The fast path's render with spans computed while writing (same text and spans as the marks)."""
    normalized = normalize_messages(messages, mark_trained=False)
    parts = [default_system if not normalized or normalized[0]["role"] != "system" else ""]
    pos = len(parts[0])
    trained = []
    for m, n in zip(messages, normalized):
        head = f"{_IM_START}{n['role']}\n"
        parts.append(head)
        parts.append(n["content"])
        parts.append(_IM_END + "\n")
        start = pos + len(head)
        pos = start + len(n["content"])
        if n["role"] == "assistant" and m.get("weight", 1) != 0:
            trained.append((start, pos))
        pos += len(_IM_END) + 1
    text = "".join(parts)
    spans = [(a, b + len(eos) if eos and text.startswith(eos, b) else b) for a, b in trained]
    return Rendered(text, spans)


def end_of_turn(tokenizer) -> str:
    """The token trained after each assistant content (and a stop token when serving)."""
    return template_features(tokenizer).eot_token or tokenizer.eos_token or ""


def render_with_spans(tokenizer, messages: list[dict]) -> Rendered:
    default_system = chatml_default_system(tokenizer)
    if default_system is not None:
        return _chatml_with_spans(messages, default_system, end_of_turn(tokenizer))
    marks = (_OPEN, _CLOSE)
    edit = CONTENT_EDITS[template_features(tokenizer).content_edit]
    marked = _apply(tokenizer, normalize_messages(messages, mark_trained=True, edit=edit))
    n_trained = sum(1 for m in messages if m.get("role") == "assistant" and m.get("weight", 1) != 0)
    if marked.count(_OPEN) > n_trained or marked.count(_CLOSE) > n_trained:
        # A message contains a sentinel character itself: render again with characters it does not contain.
        marks = _free_marks(marked)
        marked = _apply(tokenizer, normalize_messages(messages, mark_trained=True, marks=marks, edit=edit))
    open_mark, close_mark = marks
    eos = end_of_turn(tokenizer)
    text_parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0  # position in the output text
    i = 0
    while True:
        start = marked.find(open_mark, i)
        end = marked.find(close_mark, start + 1) if start >= 0 else -1
        if end < 0:  # no (complete) marked content left
            text_parts.append(marked[i:])
            break
        text_parts.append(marked[i:start])
        pos += start - i
        content = marked[start + 1 : end]
        text_parts.append(content)
        span_start = pos
        pos += len(content)
        i = end + 1
        # The end-of-turn token the template writes after the content is trained too.
        span_end = pos + len(eos) if eos and marked.startswith(eos, i) else pos
        spans.append((span_start, span_end))
    text = "".join(text_parts)
    # Templates may edit contents by position (Qwen 3 strips only the last answer's leading newlines):
    # the marks must leave exactly the text the model sees, or the mask would be wrong.
    if text != _apply(tokenizer, normalize_messages(messages, mark_trained=False)):
        raise InvalidRequestError(
            "The model's chat template changes an assistant message's content (e.g. trims whitespace) in a way that "
            "hides which tokens are the answer. Remove leading and trailing whitespace from the assistant contents.",
            param="messages",
            code="template_error",
        )
    return Rendered(text, spans)


def _loss_mask(offsets, spans: list[tuple[int, int]], text: str) -> list[int]:
    """1 for each token that starts inside a trained span (and covers at least one character), and
    for a token that starts before a span but reaches a non-space character of it: Mistral's template
    writes `' ' + content` and the tokenizer merges that space into the answer's first word, which is
    then the answer's first token. (Leading whitespace of an answer merged into the template's tokens
    stays untrained: the prompt at serving time ends with those tokens.)"""
    mask = [0] * len(offsets)
    k = 0
    for t, (s, e) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        if k == len(spans):
            break
        a, b = spans[k]
        if e > s and (a <= s < b or (s < a < e and not text[a:e].isspace())):
            mask[t] = 1
    return mask


def tokenize_rendered(tokenizer, rendered: list[Rendered]) -> list[Tokenized]:
    """One batched fast-tokenizer pass; which tokens are trained: see `_loss_mask`."""
    if not rendered:
        return []
    enc = tokenizer(
        [r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False
    )
    return [
        Tokenized(list(ids), _loss_mask(offsets, r.spans, r.text) if r.spans else [0] * len(ids))
        for r, ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"])
    ]


def count_rendered(tokenizer, rendered: list[Rendered], max_len: int | None = None) -> list[tuple[int, int, int]]:
    """(tokens, trained tokens, trained tokens among the first `max_len`) of each text: the counts of
    `tokenize_rendered`, by the same rule, without building id lists and masks in Python (dataset
    validation counts every example of a file; this keeps it near the cost of tokenizing)."""
    if not rendered:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        # Not a plain fast tokenizer, or one the HF call would configure differently: take the slow way.
        return [
            (len(t.input_ids), t.n_trained, sum(t.loss_mask[:max_len]) if max_len is not None else t.n_trained)
            for t in tokenize_rendered(tokenizer, rendered)
        ]
    limit = max_len if max_len is not None else 1 << 62
    out = []
    for r, enc in zip(rendered, backend.encode_batch([r.text for r in rendered], add_special_tokens=False)):
        n = len(enc)
        if not r.spans:
            out.append((n, 0, 0))
            continue
        offsets = enc.offsets
        if offsets != sorted(offsets):  # never seen, but then the sweep's order matters: use it as is
            mask = _loss_mask(offsets, r.spans, r.text)
            out.append((n, sum(mask), sum(mask[:limit])))
            continue
        trained = kept = 0
        for a, b in r.spans:  # tokens starting in [a, b): a slice of the sorted offsets
            lo = bisect_left(offsets, a, key=_start)
            if lo and offsets[lo - 1][1] > a and not r.text[a : offsets[lo - 1][1]].isspace():
                lo -= 1  # a token reaching into the span's text from before it (see _loss_mask)
            hi = bisect_left(offsets, b, lo=lo, key=_start)
            # Tokens covering no character are never trained (ge(start, end) is True for them).
            in_span = hi - lo - sum(starmap(ge, offsets[lo:hi]))
            trained += in_span
            if hi <= limit:
                kept += in_span
            elif lo < limit:
                kept += limit - lo - sum(starmap(ge, offsets[lo:limit]))
        out.append((n, trained, kept))
    return out


def tokenize_examples(tokenizer, examples: list[list[dict]]) -> list[Tokenized]:
    return tokenize_rendered(tokenizer, [render_with_spans(tokenizer, m) for m in examples])
