"""The Batch API through the official SDK against a real server (tiny model): chat and moderation
batches with OpenAI's output/error line formats, malformed input lines, cancel, isolation, and a
kill -9 in the middle of a batch (every line recorded exactly once after the restart)."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tests.conftest import tiny_server_env
from tests.server import RunningServer


def _line(i: int, **body) -> dict:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "tiny",
            "messages": [{"role": "user", "content": f"Say {i}."}],
            "max_tokens": 3,
            "temperature": 0,
            **body,
        },
    }


def _upload(client, lines: list) -> str:
    data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()
    return client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch").id


def _wait(client, batch_id: str, timeout: float = 300):
    deadline = time.time() + timeout
    while (b := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, f"batch stuck in {b.status}"
        time.sleep(0.5)
    return b


def _records(client, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_chat_batch_runs_every_line_with_openai_line_format(server):
    c = server.client(server.key_a)
    lines = [_line(i) for i in range(6)] + [_line(6, model="tiny", max_tokens=10**9)]  # one fails at run time
    batch = c.batches.create(
        input_file_id=_upload(c, lines), endpoint="/v1/chat/completions", completion_window="24h", metadata={"k": "v"}
    )
    assert batch.object == "batch" and batch.status in ("validating", "in_progress") and batch.metadata == {"k": "v"}
    assert batch.expires_at == batch.created_at + 24 * 3600
    done = _wait(c, batch.id)
    assert done.status == "completed" and done.completed_at and done.in_progress_at
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (7, 6, 1)
    out = _records(c, done.output_file_id)
    assert [r["custom_id"] for r in out] == [f"req-{i}" for i in range(6)]
    for r in out:
        assert r["id"].startswith("batch_req") and r["error"] is None and r["response"]["status_code"] == 200
        body = r["response"]["body"]
        assert body["object"] == "chat.completion" and r["response"]["request_id"] == body["id"]
    # Same answer as the live endpoint (greedy).
    live = c.chat.completions.create(**dict(lines[2]["body"]))
    assert out[2]["response"]["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content
    err = _records(c, done.error_file_id)
    assert [r["custom_id"] for r in err] == ["req-6"]
    assert err[0]["response"]["status_code"] == 400 and err[0]["response"]["body"]["error"]["param"] == "max_tokens"
    assert c.files.retrieve(done.output_file_id).purpose == "batch_output"
    # Listing and isolation: another organisation sees nothing.
    assert done.id in [b.id for b in c.batches.list()]
    other = server.client(server.key_b)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(done.id)
    assert done.id not in [b.id for b in other.batches.list()]
    with pytest.raises(openai.NotFoundError):
        other.files.content(done.output_file_id)
    assert c.files.retrieve(done.output_file_id).expires_at is None  # no `output_expires_after`: kept


def test_output_expires_after_sets_the_expiry_of_output_and_error_files(server):
    c = server.client(server.key_a)
    lines = [_line(0), _line(1, max_tokens=10**9)]
    batch = c.batches.create(
        input_file_id=_upload(c, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    done = _wait(c, batch.id)
    assert done.output_file_id and done.error_file_id
    for file_id in (done.output_file_id, done.error_file_id):
        f = c.files.retrieve(file_id)
        assert f.expires_at == f.created_at + 7200


def test_moderation_batch(server):
    c = server.client(server.key_a)
    lines = [
        {"custom_id": f"m{i}", "method": "POST", "url": "/v1/moderations", "body": {"input": text}}
        for i, text in enumerate(["I love tea.", "Have a nice day."])
    ]
    done = _wait(
        c, c.batches.create(input_file_id=_upload(c, lines), endpoint="/v1/moderations", completion_window="24h").id
    )
    out = _records(c, done.output_file_id)
    assert done.status == "completed" and [r["custom_id"] for r in out] == ["m0", "m1"]
    assert all(r["response"]["body"]["results"][0]["flagged"] is False for r in out)


def test_malformed_lines_fail_the_batch_naming_line_and_field(server):
    c = server.client(server.key_a)
    lines = [
        _line(0),
        "{not json",
        _line(0),
        {**_line(3), "url": "/v1/embeddings"},
        {**_line(4), "method": "GET"},
        _line(5, temperature=9),
        _line(6, model="other"),
        {"custom_id": "x"},
    ]
    b = c.batches.create(input_file_id=_upload(c, lines), endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "failed" and b.failed_at
    got = {(e.line, e.code, e.param) for e in b.errors.data}
    assert {
        (2, "invalid_json", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "mismatched_endpoint", "url"),
        (5, "invalid_value", "method"),
        (6, "invalid_value", "body.temperature"),
        (7, "mismatched_model", "body.model"),
        (8, "missing_required_parameter", "body"),
    } <= got


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"input_file_id": "file-nope"}, "file_id"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, "output_expires_after"),
        ({"output_expires_after": {"anchor": "completed_at", "seconds": 3600}}, "output_expires_after"),
    ],
)
def test_bad_create_is_400_or_404_naming_the_field(server, kw, param):
    c = server.client(server.key_a)
    args = {"input_file_id": _upload(c, [_line(0)]), "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with pytest.raises(openai.APIStatusError) as err:
        c.batches.create(**{**args, **kw})
    assert err.value.status_code in (400, 404) and err.value.body["param"] == param and err.value.body["code"]


def test_wrong_purpose_and_cancel(server):
    c = server.client(server.key_a)
    data = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    ft = c.files.create(file=("t.jsonl", io.BytesIO((data + "\n").encode())), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        c.batches.create(input_file_id=ft.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.body["code"] == "invalid_file_purpose"
    lines = [_line(i, max_tokens=40, ignore_eos=True) for i in range(40)]
    b = c.batches.create(input_file_id=_upload(c, lines), endpoint="/v1/chat/completions", completion_window="24h")
    cancelled = c.batches.cancel(b.id)
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at
    done = _wait(c, b.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert done.request_counts.completed < 40
    assert len(_records(c, done.output_file_id)) == done.request_counts.completed
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(b.id)


def test_expiry_ends_the_batch_with_batch_expired_lines(server):
    import sqlalchemy

    c = server.client(server.key_a)
    lines = [_line(i, max_tokens=40, ignore_eos=True) for i in range(30)]
    b = c.batches.create(input_file_id=_upload(c, lines), endpoint="/v1/chat/completions", completion_window="24h")
    url = server.env.get("TUNEGATE_DATABASE_URL") or f"sqlite:///{server.data_dir / 'tunegate.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # the 24h window is over
        conn.execute(
            sqlalchemy.text("UPDATE batches SET expires_at = :t WHERE id = :id"),
            {"t": int(time.time()) - 1, "id": b.id},
        )
    done = _wait(c, b.id)
    assert done.status == "expired" and done.expired_at
    err = [r for r in _records(c, done.error_file_id) if r["error"] and r["error"]["code"] == "batch_expired"]
    assert err and all(r["response"] is None for r in err)
    assert done.request_counts.completed + done.request_counts.failed == 30
    assert len(_records(c, done.output_file_id)) + len(_records(c, done.error_file_id)) == 30


def test_kill_9_mid_batch_loses_no_line_and_runs_none_twice(tmp_path, tiny_model_path):
    env = tiny_server_env(tiny_model_path, TUNEGATE_TORCH_THREADS="1", TUNEGATE_BATCH_CONCURRENCY="2")
    srv = RunningServer(tmp_path / "data", env).start()
    try:
        key = srv.create_key("batch-kill")
        c = srv.client(key)
        n = 30
        lines = [_line(i, max_tokens=24, ignore_eos=True) for i in range(n)]
        b = c.batches.create(input_file_id=_upload(c, lines), endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.time() + 300
        while c.batches.retrieve(b.id).request_counts.completed < 3:
            assert time.time() < deadline
            time.sleep(0.2)
        srv.stop(kill=True)
        srv.start()
        c = srv.client(key)
        done = _wait(c, b.id)
        out = _records(c, done.output_file_id)
        assert done.status == "completed" and done.request_counts.completed == n
        assert sorted(r["custom_id"] for r in out) == sorted(f"req-{i}" for i in range(n))
        assert len({r["id"] for r in out}) == n
    finally:
        srv.stop()
