"""Hypothesis over the chat request body, against a real server: whatever the JSON, the answer is a
200 or an OpenAI-shaped 4xx that names a field and carries a code — never a 500."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import tiny_server_env
from tests.server import RunningServer

ROLES = ["system", "developer", "user", "assistant", "tool", "function", "robot", "", 3]
text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)  # lone surrogates included
scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), text)
anything = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(text, inner, max_size=3)), max_leaves=8)
part = st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", 7]), "text": st.one_of(text, anything)}),
                 anything)
call = st.one_of(st.fixed_dictionaries({"id": text, "type": st.sampled_from(["function", "x"]),
                                        "function": st.one_of(st.fixed_dictionaries(
                                            {"name": st.one_of(text, anything), "arguments": st.one_of(text, anything)}),
                                            anything)}), anything)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES)},
    optional={"content": st.one_of(text, st.none(), st.lists(part, max_size=3), anything),
              "name": st.one_of(text, anything), "tool_calls": st.one_of(st.lists(call, max_size=2), anything),
              "function_call": anything, "tool_call_id": st.one_of(text, anything)})
body = st.fixed_dictionaries(
    {"model": st.one_of(st.just("tiny"), text, anything), "messages": st.one_of(st.lists(message, max_size=4), anything)},
    optional={"max_tokens": st.one_of(st.integers(-5, 3), anything), "n": st.one_of(st.integers(-1, 3), anything),
              "temperature": st.one_of(st.floats(-1, 3), anything), "stream": st.one_of(st.booleans(), anything),
              "stop": st.one_of(text, st.lists(text, max_size=5), anything), "logprobs": anything,
              "top_logprobs": st.one_of(st.integers(-1, 30), anything), "seed": anything,
              "response_format": anything, "tools": anything, "moderation": anything, "stream_options": anything})


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, tiny_model_path):
    data_dir = tmp_path_factory.mktemp("chat-fuzz") / "data"
    with RunningServer(data_dir, tiny_server_env(tiny_model_path, TUNEGATE_START_WORKERS="false")) as srv:
        srv.key = srv.create_key("chat-fuzz")
        yield srv


@given(body=body)
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_chat_body_never_500(chat_server, body):
    # Generation length is not what is fuzzed (a valid body would otherwise generate to the end of the context).
    if "max_tokens" not in body or isinstance(body["max_tokens"], int) and body["max_tokens"] > 2:
        body["max_tokens"] = 2
    raw = json.dumps(body)  # json keeps lone surrogates as \ud800 escapes, as a hostile client would send them
    with httpx.stream("POST", chat_server.base_url + "/chat/completions", content=raw, timeout=120,
                      headers={"Authorization": f"Bearer {chat_server.key}", "Content-Type": "application/json"}) as r:
        r.read()
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] and error["message"] and error["type"], r.text
        if r.status_code == 400:
            assert error["param"] or error["code"] == "invalid_json", r.text
