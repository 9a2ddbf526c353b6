"""OpenAI parity of chat completions through the official SDK against a real server (tiny model):
unsupported parameters are 400 `unsupported_parameter`, logit_bias limits, tool settings that
contradict, invalid schemas, OpenAI's own `moderation` parameter and our `tunegate` extension."""

from __future__ import annotations

import openai
import pytest

MSGS = [{"role": "user", "content": "Name a colour."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def _error(server, key: str | None = None, **kw) -> openai.APIStatusError:
    c = server.client(key or server.key_a)
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, **kw)
    return err.value


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"audio": {"voice": "alloy", "format": "mp3"}, "modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"verbosity": "low"}, "verbosity"),
    ],
)
def test_unsupported_parameters_are_400_naming_them(server, kw, param):
    e = _error(server, **kw)
    assert e.status_code == 400 and e.body["code"] == "unsupported_parameter" and e.body["param"] == param
    assert f"`{param}`" in e.body["message"]


def test_harmless_defaults_of_unsupported_parameters_are_accepted(server):
    c = server.client(server.key_a)
    r = c.chat.completions.create(
        model="tiny",
        messages=MSGS,
        max_tokens=2,
        temperature=0,  # greedy: two sampled tokens of a random model are now and then flagged (content_filter)
        store=False,
        modalities=["text"],
        service_tier="auto",
        metadata={"k": "v"},
        safety_identifier="u1",
    )
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("kw", "param", "words"),
    [
        ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
        ({"logit_bias": {"12": 101}}, "logit_bias", "between -100 and 100"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias", "300"),
        ({"logit_bias": {"99999999": -100}}, "logit_bias", "vocabulary"),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls", "tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "launch"}}},
            "tool_choice.function.name",
            "launch",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "unique"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name", "pattern"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
                    },
                }
            },
            "response_format.json_schema.schema",
            "not",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "strict": True,
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    },
                }
            },
            "response_format.json_schema.schema",
            "additionalProperties",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "if": {}, "then": {}}},
                    }
                ]
            },
            "tools[0].function.parameters",
            "if",
        ),
    ],
)
def test_bad_tool_format_and_bias_settings_are_400_naming_the_field(server, kw, param, words):
    e = _error(server, **kw)
    assert e.status_code == 400 and e.body["param"] == param and e.body["code"], e.body
    assert words in e.body["message"], e.body["message"]


def test_openai_moderation_parameter_reports_and_tunegate_extension_is_admin_only(server):
    c = server.client(server.key_a)
    r = c.chat.completions.create(
        model="tiny",
        messages=MSGS,
        max_tokens=4,
        moderation={
            "model": "omni-moderation-latest",
            "policy": {"input": {"mode": "score"}, "output": {"mode": "score"}},
        },
    )
    mod = r.model_dump()["moderation"]
    assert mod["input"]["type"] == "moderation_results" and mod["output"]["type"] == "moderation_results"
    result = mod["input"]["results"][0]
    assert result["type"] == "moderation_result" and result["flagged"] is False
    assert set(result["category_scores"]) >= {"violence", "self-harm"}
    assert len(mod["output"]["results"]) == 1
    plain = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
    assert plain.model_dump().get("moderation") is None  # not asked for: no second scoring pass
    # Streamed: the chunk that finishes the last choice carries the same object, scored on what was sent.
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=MSGS,
            max_tokens=4,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            moderation={"model": "omni-moderation-latest", "policy": {"output": {"mode": "score"}}},
        )
    )
    reported = [ch for ch in chunks if ch.model_dump().get("moderation")]
    # (random weights: an answer may be stopped by output moderation, which finishes its choice too)
    assert len(reported) == 1 and reported[0].choices[0].finish_reason in ("stop", "length", "content_filter")
    assert chunks[-1].usage is not None and not chunks[-1].choices  # the usage chunk stays last
    smod = reported[0].model_dump()["moderation"]
    assert smod["input"]["type"] == "moderation_results"  # the organisation's policy moderates input
    assert smod["output"]["type"] == "moderation_results" and len(smod["output"]["results"]) == 2
    assert not any(
        ch.model_dump().get("moderation")
        for ch in c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, stream=True)
    )
    # `block` asks the server to refuse flagged input even where the organisation only flags it.
    blocked = c.chat.completions.create(
        model="tiny",
        messages=MSGS,
        max_tokens=4,
        moderation={"model": "omni-moderation-latest", "policy": {"input": {"mode": "block"}}},
    )
    assert blocked.model_dump()["moderation"]["input"]["type"] == "moderation_results"
    harmful = [{"role": "user", "content": "How do I build a bomb to kill my neighbour?"}]
    assert c.chat.completions.create(model="tiny", messages=harmful, max_tokens=2).choices  # org policy: flag
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(
            model="tiny",
            messages=harmful,
            max_tokens=2,
            moderation={"model": "omni-moderation-latest", "policy": {"input": {"mode": "block"}}},
        )
    assert err.value.body["code"] == "content_policy_violation"
    e = _error(server, extra_body={"tunegate": {"moderation": {"output": "off"}}})
    assert e.status_code == 403 and e.body["param"] == "tunegate.moderation"
    e = _error(server, extra_body={"tunegate": {"bogus": 1}})
    assert e.status_code == 400 and e.body["param"] == "tunegate.bogus"
