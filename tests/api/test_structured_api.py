"""Structured outputs, tool calls and logit_bias through the official SDK against a real server on
a tiny random model: whatever the weights say, constrained decoding makes every answer parse and
validate (streamed or not), `parse()` works with pydantic models and pydantic function tools, and
`logit_bias` changes greedy decoding exactly as OpenAI defines it."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

MSGS = [{"role": "user", "content": "Describe a person."}]


class Person(BaseModel):
    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user"]


class GetWeather(BaseModel):
    city: str = Field(max_length=10)


class SetTimer(BaseModel):
    minutes: int = Field(ge=1, le=99)


TOOLS = [
    openai.pydantic_function_tool(GetWeather, name="get_weather"),
    openai.pydantic_function_tool(SetTimer, name="set_timer"),
]


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_parse_with_a_pydantic_model(server, temperature):
    c = server.client(server.key_a)
    for seed in range(2):
        r = c.chat.completions.parse(
            model="tiny", messages=MSGS, response_format=Person, max_tokens=120, temperature=temperature, seed=seed
        )
        msg = r.choices[0].message
        assert isinstance(msg.parsed, Person) and r.choices[0].finish_reason == "stop"
        assert Person.model_validate_json(msg.content) == msg.parsed


def test_json_schema_and_json_object_streamed(server):
    c = server.client(server.key_a)
    schema = Person.model_json_schema()
    for fmt in (
        {"type": "json_schema", "json_schema": {"name": "p", "schema": schema, "strict": False}},
        {"type": "json_object"},
    ):
        chunks = list(
            c.chat.completions.create(
                model="tiny", messages=MSGS, response_format=fmt, max_tokens=120, temperature=0, stream=True
            )
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
        if fmt["type"] == "json_schema":
            assert finish == "stop"
            jsonschema.validate(json.loads(text), schema)
        elif finish == "stop":  # an open object may run to max_tokens on random weights; a closed one parses
            assert isinstance(json.loads(text), dict)
        else:
            assert text.startswith("{")


def test_required_named_and_parallel_tool_calls(server):
    c = server.client(server.key_a)
    kw = dict(
        model="tiny",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        max_tokens=150,
        temperature=0,
    )
    r = c.chat.completions.create(tool_choice="required", **kw)
    choice = r.choices[0]  # parallel calls: random weights may keep calling until max_tokens; all whole calls count
    assert choice.finish_reason in ("tool_calls", "length") and choice.message.tool_calls
    assert choice.message.content is None
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call")
        model = {"get_weather": GetWeather, "set_timer": SetTimer}[call.function.name]
        model.model_validate_json(call.function.arguments)
    named = c.chat.completions.create(tool_choice={"type": "function", "function": {"name": "set_timer"}}, **kw)
    calls = named.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "set_timer"
    one = c.chat.completions.create(tool_choice="required", parallel_tool_calls=False, **kw)
    assert len(one.choices[0].message.tool_calls) == 1 and one.choices[0].finish_reason == "tool_calls"
    none = c.chat.completions.create(tool_choice="none", **{**kw, "max_tokens": 8})
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_calls_are_openai_deltas_that_match(server):
    c = server.client(server.key_a)
    kw = dict(
        model="tiny",
        messages=[{"role": "user", "content": "Set a timer."}],
        tools=TOOLS,
        max_tokens=150,
        temperature=0,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    whole = c.chat.completions.create(**kw).choices[0].message.tool_calls
    chunks = list(c.chat.completions.create(stream=True, **kw))
    deltas = [d for ch in chunks if ch.choices for d in (ch.choices[0].delta.tool_calls or [])]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    firsts = [d for d in deltas if d.id]
    assert [(d.index, d.id is not None, d.function.name, d.function.arguments) for d in firsts] == [
        (i, True, call.function.name, "") for i, call in enumerate(whole)
    ]
    for i, call in enumerate(whole):
        assert "".join(d.function.arguments for d in deltas if d.index == i and not d.id) == call.function.arguments
    # The SDK's own stream helper assembles the same calls and parses their arguments.
    with c.chat.completions.stream(**{k: v for k, v in kw.items() if k != "tools"}, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    assert [t.function.name for t in final.choices[0].message.tool_calls] == [t.function.name for t in whole]


def test_parse_with_pydantic_function_tools(server):
    c = server.client(server.key_a)
    r = c.chat.completions.parse(
        model="tiny",
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[TOOLS[0]],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=100,
        temperature=0,
    )
    call = r.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_logit_bias_follows_openai(server, tiny_model_path):
    from tunegate.catalog import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    c = server.client(server.key_a)
    kw = dict(model="tiny", messages=MSGS, max_tokens=1, temperature=0)
    target = tok(" zebra", add_special_tokens=False)["input_ids"][0]
    forced = c.chat.completions.create(logit_bias={str(target): 100}, **kw).choices[0].message.content
    assert forced == tok.decode([target])
    greedy = c.chat.completions.create(**kw).choices[0].message.content
    ids = tok(greedy, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and greedy != forced
    banned = c.chat.completions.create(logit_bias={str(ids[0]): -100}, **kw).choices[0].message.content
    assert banned != greedy
