"""Schema-driven fuzzing of the real server: schemathesis generates requests for every route of the
server's own OpenAPI document and sends each with a member's key and with an admin's key.

Zero server errors, and every response (status code and body) is one the document describes. The
budget is bounded for CI (`FUZZ_EXAMPLES` per route and key); `bench/fuzz.sh`-style longer runs
only raise it.
"""

from __future__ import annotations

import io
import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from tests.conftest import tiny_server_env
from tests.server import RunningServer

FUZZ_EXAMPLES = int(os.environ.get("TUNEGATE_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_model_path):
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    # No training workers: generated jobs stay queued instead of training for minutes each.
    with RunningServer(data_dir, tiny_server_env(tiny_model_path, TUNEGATE_START_WORKERS="false",
                                                 TUNEGATE_MAX_UPLOAD_BYTES=str(1024 * 1024))) as srv:
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
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
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
