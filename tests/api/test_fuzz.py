"""Fuzzing the real server.

- schemathesis generates requests for every route of the server's own OpenAPI document and sends
  each with a member's key and with an admin's key: zero server errors, and every response (status
  code and body) is one the document describes;
- Hypothesis builds hostile chat request bodies (wrong types at every depth, lone surrogates, unknown
  roles and parts): the answer is a 200 or an OpenAI-shaped 4xx naming a field, never a 500.

The budget is bounded for CI (`TUNEGATE_FUZZ_EXAMPLES` per route and key, default 8); a longer run
only raises it.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from tests.conftest import tiny_server_env
from tests.server import RunningServer

FUZZ_EXAMPLES = int(os.environ.get("TUNEGATE_FUZZ_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]

# Hostile chat bodies for Hypothesis.
ROLES = ["system", "developer", "user", "assistant", "tool", "function", "robot", "", 3]
text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)  # lone surrogates included
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), text)
anything = st.recursive(
    scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)), max_leaves=8
)
part = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", 7]), "text": st.one_of(text, anything)}),
    anything,
)
call = st.one_of(
    st.fixed_dictionaries(
        {
            "id": text,
            "type": st.sampled_from(["function", "x"]),
            "function": st.one_of(
                st.fixed_dictionaries({"name": st.one_of(text, anything), "arguments": st.one_of(text, anything)}),
                anything,
            ),
        }
    ),
    anything,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES)},
    optional={
        "content": st.one_of(text, st.none(), st.lists(part, max_size=3), anything),
        "name": st.one_of(text, anything),
        "tool_calls": st.one_of(st.lists(call, max_size=2), anything),
        "function_call": anything,
        "tool_call_id": st.one_of(text, anything),
    },
)
body = st.fixed_dictionaries(
    {
        "model": st.one_of(st.just("tiny"), text, anything),
        "messages": st.one_of(st.lists(message, max_size=4), anything),
    },
    optional={
        "max_tokens": st.one_of(st.integers(-5, 3), anything),
        "n": st.one_of(st.integers(-1, 3), anything),
        "temperature": st.one_of(st.floats(-1, 3), anything),
        "stream": st.one_of(st.booleans(), anything),
        "stop": st.one_of(text, st.lists(text, max_size=5), anything),
        "logprobs": anything,
        "top_logprobs": st.one_of(st.integers(-1, 30), anything),
        "seed": anything,
        "response_format": anything,
        "tools": anything,
        "moderation": anything,
        "stream_options": anything,
    },
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_model_path):
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    # No training workers: generated jobs stay queued instead of training for minutes each.
    with RunningServer(
        data_dir,
        tiny_server_env(tiny_model_path, TUNEGATE_START_WORKERS="false", TUNEGATE_MAX_UPLOAD_BYTES=str(1024 * 1024)),
    ) as srv:
        srv.member = srv.create_key("fuzz")
        srv.admin = srv.create_key("fuzz", admin=True)
        client = srv.client(srv.member)
        data = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n' * 12
        srv.file_id = client.files.create(file=("f.jsonl", io.BytesIO(data)), purpose="fine-tune").id
        srv.job_id = client.fine_tuning.jobs.create(model="tiny", training_file=srv.file_id).id
        yield srv


def test_every_route_with_member_and_admin_keys(fuzz_server):
    # Driven by hand (not schemathesis' pytest plugin): one Hypothesis run per operation of the live document.
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # every route of the document, not a subset
    failures: list[str] = []
    statuses: Counter = Counter()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def run(case):
            if case.operation.path == "/v1/chat/completions" and isinstance(case.body, dict):
                case.body["max_tokens"] = 2  # generation length is not what is fuzzed here; keeps the budget
                case.body.pop("max_completion_tokens", None)
            for key in (fuzz_server.member, fuzz_server.admin):
                if key == fuzz_server.admin and case.method != "DELETE":
                    # Generated ids only ever meet 404; the admin's calls use ids that exist, to go deeper.
                    real = {"file_id": fuzz_server.file_id, "job_id": fuzz_server.job_id, "model": "tiny"}
                    for name in set(case.path_parameters or {}) & set(real):
                        case.path_parameters[name] = real[name]
                response = case.call(headers={"Authorization": f"Bearer {key}"}, timeout=120)
                statuses[(operation.path, response.status_code)] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except Exception as exc:  # collect, so one run reports every failing route
                    failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:600]}")
                    return

        run()
    assert not failures, "\n\n".join(failures[:20])
    # The run reached past authentication and validation on most routes, not only 4xx answers.
    reached = {path for (path, status), _ in statuses.items() if status < 300}
    assert len(reached) >= 15, sorted(statuses.items())
    print(f"fuzz: {sum(statuses.values())} requests; 2xx on {len(reached)} of {len(operations)} routes")


@given(body=body)
@settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_chat_body_never_500(fuzz_server, body):
    # Generation length is not what is fuzzed (a valid body would otherwise generate to the end of the context).
    if "max_tokens" not in body or isinstance(body["max_tokens"], int) and body["max_tokens"] > 2:
        body["max_tokens"] = 2
    raw = json.dumps(body)  # json keeps lone surrogates as \ud800 escapes, as a hostile client would send them
    with httpx.stream(
        "POST",
        fuzz_server.base_url + "/chat/completions",
        content=raw,
        timeout=120,
        headers={"Authorization": f"Bearer {fuzz_server.member}", "Content-Type": "application/json"},
    ) as r:
        r.read()
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] and error["message"] and error["type"], r.text
        if r.status_code == 400:
            assert error["param"] or error["code"] == "invalid_json", r.text
