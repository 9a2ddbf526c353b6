"""Constrained decoding: `response_format` (json_object, json_schema) and forced tool calls, enforced
token by token with llguidance, plus `logit_bias`.

Why llguidance: it is one of the grammar backends vLLM ships (`guided_decoding_backend="guidance"`,
so a vLLM engine gives the same answers for the same request), it computes a token mask on CPU in
about a millisecond from a JSON schema or a Lark grammar, it has no dependencies (xgrammar pulls in
triton and a pinned torch range) and it reports unsupported JSON Schema keywords by name, which we
return as a 400.

Owns: compiling a request's constraints into one grammar (checked when the request arrives), the
per-choice logits processors the engine applies before sampling, and the output format of a tool
call (`catalog.template.TOOL_CALL_OPEN`...), which the grammar enforces exactly as training renders it.
Does not own parsing a finished answer into `tool_calls` (`serve/tools.py`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import torch

from tunegate.catalog.template import JSON_SEPARATORS, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, tool_call_prefix
from tunegate.errors import InvalidRequestError

# JSON exactly as `json.dumps` writes it (what training renders), no free whitespace the model could loop on.
JSON_OPTIONS = {"item_separator": JSON_SEPARATORS[0], "key_separator": JSON_SEPARATORS[1], "whitespace_flexible": False}
_tokenizers: dict[int, Any] = {}
_lock = threading.Lock()


def grammar_tokenizer(tokenizer):
    """llguidance's view of a HF fast tokenizer (built once per tokenizer, ~1 s for a 49k vocabulary)."""
    key = id(tokenizer)
    with _lock:
        if key not in _tokenizers:
            import llguidance.hf

            _tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer)
        return _tokenizers[key]


def _strict_problems(schema: Any, path: str) -> list[str]:
    """OpenAI's rules for `strict: true`: every object closes `additionalProperties` and requires all
    of its properties (so the answer always has every field)."""
    problems = []
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            if schema.get("additionalProperties") is not False:
                problems.append(f"{path or '(root)'}: `additionalProperties` must be false")
            props = list((schema.get("properties") or {}).keys())
            missing = [p for p in props if p not in (schema.get("required") or [])]
            if missing:
                problems.append(
                    f"{path or '(root)'}: `required` must list every property (missing {', '.join(missing)})"
                )
        for key, sub in schema.items():
            if key in ("properties", "$defs", "definitions") and isinstance(sub, dict):
                problems += [p for name, s in sub.items() for p in _strict_problems(s, f"{path}/{key}/{name}")]
            elif key in ("items", "additionalProperties") and isinstance(sub, dict):
                problems += _strict_problems(sub, f"{path}/{key}")
            elif key in ("anyOf", "allOf", "prefixItems") and isinstance(sub, list):
                problems += [p for i, s in enumerate(sub) for p in _strict_problems(s, f"{path}/{key}/{i}")]
    return problems


def check_schema(schema: Any, tokenizer, *, param: str, strict: bool) -> str:
    """The llguidance grammar of a JSON schema; 400 naming the unsupported or invalid part."""
    from llguidance import LLMatcher

    if not isinstance(schema, dict):
        raise InvalidRequestError(f"`{param}` must be a JSON Schema object.", param=param, code="invalid_value")
    if strict:
        problems = _strict_problems(schema, "")
        if schema.get("type") != "object":
            problems.insert(0, "(root): a strict schema must be of `type: object`")
        if problems:
            raise InvalidRequestError(
                f"Invalid schema for `{param}` with `strict: true`: "
                + "; ".join(problems[:5])
                + ". Fix the schema or set `strict: false`.",
                param=param,
                code="invalid_schema",
            )
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"Invalid schema for `{param}`: {exc}.", param=param, code="invalid_schema") from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, grammar_tokenizer(tokenizer))
    if is_error:
        raise InvalidRequestError(
            f"Unsupported or invalid JSON Schema in `{param}`: {messages[0]}. Remove or "
            "rewrite that part of the schema.",
            param=param,
            code="invalid_schema",
        )
    return grammar


def _lark_string(text: str) -> str:
    return json.dumps(text)


def tool_grammar(tools: list[dict], tokenizer, *, mode: str, parallel: bool, text_schema: dict | None = None) -> str:
    """A Lark grammar for tool calls in the project's format (see `catalog.template`).

    `mode`: "required" (at least one call, nothing else), a function name (exactly that call), or
    "auto" (either an answer that does not start like a call, or calls); `text_schema`: the
    `response_format` schema a non-call answer must follow."""
    from llguidance import LLMatcher

    rules, names = [], []
    for i, tool in enumerate(tools):
        fn = tool["function"]
        if mode not in ("required", "auto") and fn["name"] != mode:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}, "additionalProperties": False}
        check_schema(params, tokenizer, param=f"tools[{i}].function.parameters", strict=bool(fn.get("strict")))
        schema = {**params, "x-guidance": JSON_OPTIONS}
        rules.append(
            f"call_{i}: {_lark_string(tool_call_prefix(fn['name']))} args_{i} "
            f"{_lark_string('}' + TOOL_CALL_CLOSE)}\nargs_{i}: %json {json.dumps(schema)}"
        )
        names.append(f"call_{i}")
    calls = 'call ("\\n" call)*' if parallel and mode in ("required", "auto") else "call"
    start = "text | calls" if mode == "auto" else "calls"
    # Plain text may not start with the first character of a call, so the two never overlap.
    text = f"text: TEXT\nTEXT: /[^{TOOL_CALL_OPEN[0]}][\\s\\S]*/"
    if text_schema is not None:
        text = f"text: %json {json.dumps({**text_schema, 'x-guidance': JSON_OPTIONS})}"
    lark = f"start: {start}\ncalls: {calls}\ncall: {' | '.join(names)}\n" + "\n".join(rules) + "\n" + text + "\n"
    grammar = LLMatcher.grammar_from_lark(lark)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, grammar_tokenizer(tokenizer))
    if is_error:
        raise InvalidRequestError(
            f"The tools cannot be compiled into a grammar: {messages[0]}.", param="tools", code="invalid_schema"
        )
    return grammar


@dataclass(frozen=True)
class GrammarProcessorFactory:
    """Makes one `GrammarProcessor` per choice (each choice keeps its own parser state)."""

    grammar: str
    tokenizer: Any
    eos_ids: tuple[int, ...]

    def __call__(self) -> GrammarProcessor:
        return GrammarProcessor(self.grammar, grammar_tokenizer(self.tokenizer), self.eos_ids)


class GrammarProcessor:
    """Masks every token the grammar does not allow next; once the grammar is complete only the
    end-of-turn token is allowed, so the answer ends exactly where the grammar does."""

    def __init__(self, grammar: str, ll_tokenizer, eos_ids: tuple[int, ...]):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(ll_tokenizer, grammar, log_level=0)
        self.eos_ids = eos_ids
        self.consumed = 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        new = output_ids[self.consumed :]
        if new:
            self.matcher.consume_tokens(new)
            self.consumed = len(output_ids)
        vocab = logits.shape[-1]
        if self.matcher.is_error():  # cannot happen for tokens the mask allowed; fail closed to end-of-turn
            allowed = torch.zeros(vocab, dtype=torch.bool)
            allowed[list(self.eos_ids)] = True
        else:
            bias = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
            allowed = torch.zeros(vocab, dtype=torch.bool)
            n = min(vocab, bias.numel())
            allowed[:n] = bias[:n] > 0
        return logits.masked_fill(~allowed, float("-inf"))


def logit_bias(bias: dict[str, float], vocab_size: int) -> LogitBiasFactory:
    bad = [k for k in bias if int(k) >= vocab_size]
    if bad:
        raise InvalidRequestError(
            f"`logit_bias` names token id {bad[0]}, but this model's vocabulary has "
            f"{vocab_size} tokens (ids 0..{vocab_size - 1}).",
            param="logit_bias",
            code="invalid_value",
        )
    return LogitBiasFactory(tuple(int(k) for k in bias), tuple(float(v) for v in bias.values()))


@dataclass(frozen=True)
class LogitBiasFactory:
    ids: tuple[int, ...]
    values: tuple[float, ...]

    def __call__(self):
        ids, values = list(self.ids), torch.tensor(self.values)

        def apply(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            logits[ids] += values.to(logits.dtype)
            return logits

        return apply
