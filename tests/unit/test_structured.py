"""Constrained decoding with llguidance and the tool-call convention, on the real tokenizer: random
logits under a grammar always give answers that parse and validate; streaming parse == whole parse."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from tunegate.catalog.template import render_tool_call
from tunegate.errors import InvalidRequestError
from tunegate.serve import structured
from tunegate.serve.tools import ToolCallStream, parse_tool_calls

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


def generate(tokenizer, grammar: str, seed: int, max_tokens: int = 200) -> str:
    """Sample from random logits under the grammar until end-of-turn (what the engine's hook does)."""
    proc = structured.GrammarProcessorFactory(grammar, tokenizer, (tokenizer.eos_token_id,))()
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for _ in range(max_tokens):
        logits = proc(out, torch.randn(len(tokenizer), generator=g) * 3)
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
        if token == tokenizer.eos_token_id:
            return tokenizer.decode(out)
        out.append(token)
    raise AssertionError("the grammar did not end the answer")


@pytest.mark.parametrize("seed", range(4))
def test_random_logits_under_a_schema_always_validate(tokenizer, seed):
    grammar = structured.check_schema(PERSON, tokenizer, param="p", strict=True)
    answer = json.loads(generate(tokenizer, grammar, seed))
    jsonschema.validate(answer, PERSON)


def test_json_object_mode_allows_any_object_and_then_only_the_end(tokenizer):
    grammar = structured.check_schema({"type": "object"}, tokenizer, param="p", strict=False)
    proc = structured.GrammarProcessorFactory(grammar, tokenizer, (tokenizer.eos_token_id,))()
    first = torch.isfinite(proc([], torch.zeros(len(tokenizer)))).nonzero().flatten().tolist()
    assert first and all(tokenizer.decode([t]).startswith("{") for t in first)
    ids = tokenizer('{"a": [1, {"b": null}], "c": "x"}', add_special_tokens=False)["input_ids"]
    allowed = torch.isfinite(proc(ids, torch.zeros(len(tokenizer)))).nonzero().flatten().tolist()
    assert allowed == [tokenizer.eos_token_id]


@pytest.mark.parametrize(
    ("schema", "strict", "words"),
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, False, ["not"]),
        ({"type": "object", "if": {}, "then": {}}, False, ["if", "then"]),
        ({"$ref": "#/$defs/missing"}, False, ["missing"]),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, True, ["additionalProperties", "required"]),
        ({"type": "array"}, True, ["type: object"]),
    ],
)
def test_unsupported_or_non_strict_schemas_are_400_naming_the_part(tokenizer, schema, strict, words):
    with pytest.raises(InvalidRequestError) as err:
        structured.check_schema(schema, tokenizer, param="response_format.json_schema.schema", strict=strict)
    assert err.value.status_code == 400 and err.value.param == "response_format.json_schema.schema"
    assert all(w in err.value.message for w in words), err.value.message


@pytest.mark.parametrize(("mode", "parallel"), [("required", True), ("required", False), ("get_time", False)])
def test_forced_tool_calls_always_parse_to_known_tools(tokenizer, mode, parallel):
    grammar = structured.tool_grammar([WEATHER, TIME], tokenizer, mode=mode, parallel=parallel)
    for seed in range(3):
        text = generate(tokenizer, grammar, seed, 300)
        content, calls = parse_tool_calls(text)
        assert content is None and calls, text
        assert parallel or len(calls) == 1
        for call in calls:
            assert call.function.name in (("get_weather", "get_time") if mode == "required" else (mode,))
            schema = (WEATHER if call.function.name == "get_weather" else TIME)["function"]["parameters"]
            jsonschema.validate(json.loads(call.function.arguments), schema)
            assert call.id.startswith("call-") or call.id.startswith("call_")


def test_auto_mode_allows_text_or_calls_and_logit_bias_bans_tokens(tokenizer):
    grammar = structured.tool_grammar([WEATHER], tokenizer, mode="auto", parallel=True)
    proc = structured.GrammarProcessorFactory(grammar, tokenizer, (tokenizer.eos_token_id,))()
    allowed = torch.isfinite(proc([], torch.zeros(len(tokenizer))))
    opener = tokenizer("<", add_special_tokens=False)["input_ids"][0]
    assert allowed.sum() > 1000 and allowed[opener]  # free text, or the start of a call
    bias = structured.logit_bias({str(opener): -100, "5": 100}, len(tokenizer))()
    logits = bias([], torch.zeros(len(tokenizer)))
    assert logits[opener] == -100 and logits[5] == 100 and int(torch.argmax(logits)) == 5
    with pytest.raises(InvalidRequestError) as err:
        structured.logit_bias({"999999": 1}, len(tokenizer))
    assert err.value.param == "logit_bias"


def test_stream_parser_gives_openai_deltas_that_add_up(tokenizer):
    calls = [
        {"function": {"name": "get_weather", "arguments": json.dumps({"city": 'Paris "}</tool_call>'})}},
        {"function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}},
    ]
    text = "\n".join(render_tool_call(c) for c in calls)
    content, whole = parse_tool_calls(text)
    assert content is None and [c.function.name for c in whole] == ["get_weather", "get_time"]
    assert json.loads(whole[0].function.arguments) == {"city": 'Paris "}</tool_call>'}
    stream = ToolCallStream()
    deltas = [d for ch in text for d in stream.feed(ch)]
    firsts = [d for d in deltas if d.id]
    assert [d.function.name for d in firsts] == ["get_weather", "get_time"] and all(
        d.function.arguments == "" for d in firsts
    )
    for i, call in enumerate(whole):
        assert "".join(d.function.arguments for d in deltas if d.index == i and not d.id) == call.function.arguments
    assert parse_tool_calls("Hello <b>there</b>") == ("Hello <b>there</b>", [])
    assert parse_tool_calls('<tool_call>{"name": "get_weather", "argu')[1] == []
