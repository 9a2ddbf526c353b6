"""The Uploads API and `files.create(expires_after=...)` through the official SDK against a real
server: parts beyond the single-request limit assembled in order with md5, parts out of order,
unknown and foreign parts, cancel, the SDK's chunked helper, and file expiry enforced."""

from __future__ import annotations

import hashlib
import io
import json
import time

import httpx
import openai
import pytest

from tests.conftest import tiny_server_env
from tests.server import RunningServer

LIMIT = 64 * 1024  # the single-request limit of this server


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_path):
    data_dir = tmp_path_factory.mktemp("uploads") / "data"
    env = tiny_server_env(
        tiny_model_path, TUNEGATE_MAX_UPLOAD_BYTES=str(LIMIT), TUNEGATE_MAX_UPLOAD_TOTAL_BYTES=str(LIMIT * 8)
    )
    with RunningServer(data_dir, env) as s:
        s.key_a, s.key_b = s.create_key("up-a"), s.create_key("up-b")
        yield s


def _data(n_lines: int) -> bytes:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "content": f"Answer {i}, " + "x" * 40},
                ]
            }
        )
        + "\n"
        for i in range(n_lines)
    ).encode()


def test_parts_beyond_the_single_request_limit_make_one_validated_file(srv):
    c = srv.client(srv.key_a)
    data = _data(2000)
    assert LIMIT * 2 < len(data) < LIMIT * 8
    with pytest.raises(openai.APIStatusError) as err:  # too big for one request
        c.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert err.value.status_code == 413
    up = c.uploads.create(bytes=len(data), filename="big.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    assert up.status == "pending" and up.expires_at == up.created_at + 3600
    chunks = [data[i : i + LIMIT // 2] for i in range(0, len(data), LIMIT // 2)]
    parts = [c.uploads.parts.create(up.id, data=chunk) for chunk in chunks]
    assert all(p.object == "upload.part" and p.upload_id == up.id for p in parts)
    # Out of order: the md5 of the real file does not match -> 400 naming md5; the upload stays pending.
    swapped = [parts[1].id, parts[0].id] + [p.id for p in parts[2:]]
    with pytest.raises(openai.BadRequestError) as err:
        c.uploads.complete(up.id, part_ids=swapped, md5=hashlib.md5(data).hexdigest())
    assert err.value.body["param"] == "md5" and err.value.body["code"] == "checksum_mismatch"
    with pytest.raises(openai.BadRequestError) as err:
        c.uploads.complete(up.id, part_ids=[p.id for p in parts[:-1]])
    assert err.value.body["param"] == "part_ids"
    with pytest.raises(openai.BadRequestError) as err:
        c.uploads.complete(up.id, part_ids=[p.id for p in parts] + ["part-nope"])
    assert err.value.body["param"] == f"part_ids[{len(parts)}]"
    with pytest.raises(openai.NotFoundError):  # another organisation cannot touch it
        srv.client(srv.key_b).uploads.complete(up.id, part_ids=[p.id for p in parts])
    done = c.uploads.complete(up.id, part_ids=[p.id for p in parts], md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed" and done.file.bytes == len(data) and done.file.purpose == "fine-tune"
    assert c.files.content(done.file.id).content == data
    assert c.files.retrieve(done.file.id).status == "processed"
    with pytest.raises(openai.ConflictError):
        c.uploads.parts.create(up.id, data=b"more")


def test_sdk_chunked_helper_cancel_and_limits(srv, tmp_path):
    c = srv.client(srv.key_a)
    data = _data(300)
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    up = c.uploads.upload_file_chunked(file=path, mime_type="application/jsonl", purpose="batch", part_size=LIMIT // 4)
    assert up.status == "completed" and c.files.content(up.file.id).content == data
    with pytest.raises(openai.BadRequestError) as err:
        c.uploads.create(bytes=LIMIT * 9, filename="x", mime_type="text/plain", purpose="batch")
    assert err.value.body["param"] == "bytes"
    with pytest.raises(openai.BadRequestError) as err:
        c.uploads.create(bytes=10, filename="x", mime_type="text/plain", purpose="wrong")
    assert err.value.body["param"] == "purpose"
    up = c.uploads.create(bytes=10, filename="x.jsonl", mime_type="text/plain", purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:  # more than announced
        c.uploads.parts.create(up.id, data=b"x" * 11)
    assert err.value.body["param"] == "data"
    c.uploads.parts.create(up.id, data=b"x" * 4)
    assert c.uploads.cancel(up.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        c.uploads.complete(up.id, part_ids=["part-x"])


def test_files_expires_after_is_enforced(srv):
    c = srv.client(srv.key_a)
    f = c.files.create(
        file=("e.jsonl", io.BytesIO(_data(3))), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert f.expires_at == f.created_at + 3600
    with pytest.raises(openai.BadRequestError) as err:
        c.files.create(
            file=("e.jsonl", io.BytesIO(_data(3))),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 5},
        )
    assert err.value.body["param"] == "expires_after"
    # Move the clock past the expiry by editing the stored expiry (the server enforces it on every read).
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{srv.data_dir / 'tunegate.db'}")
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text("UPDATE files SET expires_at = :t WHERE id = :id"), {"t": int(time.time()) - 1, "id": f.id}
        )
    assert f.id not in [x.id for x in c.files.list()]
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
    r = httpx.get(f"{srv.base_url}/files/{f.id}/content", headers={"Authorization": f"Bearer {srv.key_a}"})
    assert r.status_code == 404
    up = c.uploads.create(
        bytes=5,
        filename="y",
        mime_type="text/plain",
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    p = c.uploads.parts.create(up.id, data=b"hello")
    done = c.uploads.complete(up.id, part_ids=[p.id])
    assert done.file.expires_at == done.file.created_at + 7200
