"""Files API through the official openai SDK against a real server."""

import io
import json

import httpx
import openai
import pytest

GOOD = (
    "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"Say {i}"},
                    {"role": "assistant", "content": f"{i}"},
                ]
            }
        )
        for i in range(12)
    ).encode()
    + b"\n"
)


def test_upload_list_retrieve_download_delete(server):
    client = server.client(server.key_a)
    created = [client.files.create(file=(f"train{i}.jsonl", io.BytesIO(GOOD)), purpose="fine-tune") for i in range(3)]
    f = created[0]
    assert f.id.startswith("file-") and f.bytes == len(GOOD) and f.purpose == "fine-tune"
    assert f.status == "processed" and f.filename == "train0.jsonl"
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).content == GOOD  # byte-identical

    page1 = client.files.list(limit=2, purpose="fine-tune")
    assert len(page1.data) == 2 and page1.has_more
    page2 = client.files.list(limit=2, purpose="fine-tune", after=page1.data[-1].id)
    ids = [x.id for x in page1.data] + [x.id for x in page2.data]
    assert {c.id for c in created} <= set(ids) and len(ids) == len(set(ids))
    assert [x.id for x in client.files.list(order="asc").data][:3] == [c.id for c in created]
    all_ids = [x.id for x in client.files.list(limit=2)]  # SDK cursor pagination
    assert sorted(all_ids) == sorted(c.id for c in created)

    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_validation_report_stored_and_served(server):
    client = server.client(server.key_a)
    bad = b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n'
    f = client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    assert f.status == "error" and "line 2" in f.status_details
    r = httpx.get(f"{server.base_url}/files/{f.id}/validation", headers={"Authorization": f"Bearer {server.key_a}"})
    report = r.json()
    assert r.status_code == 200 and report["valid"] is False
    codes = {(e["code"], e.get("line")) for e in report["errors"]}
    assert ("example_missing_assistant_message", 1) in codes
    good = client.files.create(file=("good.jsonl", io.BytesIO(GOOD)), purpose="fine-tune")
    rep = httpx.get(
        f"{server.base_url}/files/{good.id}/validation", headers={"Authorization": f"Bearer {server.key_a}"}
    ).json()
    assert rep["valid"] is True and rep["n_examples"] == 12 and rep["tokens"]


def test_auth_and_isolation(server):
    f = server.client(server.key_a).files.create(file=("t.jsonl", io.BytesIO(GOOD)), purpose="evals")
    with pytest.raises(openai.AuthenticationError):
        server.client("tg-wrong").files.list()
    other = server.client(server.key_b)
    for call in (
        lambda: other.files.retrieve(f.id),
        lambda: other.files.content(f.id),
        lambda: other.files.delete(f.id),
    ):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.body["code"] == "file_not_found"
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve("file-doesnotexist")
    assert f.id not in [x.id for x in other.files.list().data]
    assert server.client(server.key_a).files.retrieve(f.id).id == f.id  # still intact


def test_bad_purpose_and_errors_have_openai_shape(server):
    client = server.client(server.key_a)
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("t.jsonl", io.BytesIO(GOOD)), purpose="assistants")
    assert e.value.body["param"] == "purpose"
    h = {"Authorization": f"Bearer {server.key_a}"}
    for method, path, status in [("GET", "/v1/nope", 404), ("PUT", "/v1/files", 405), ("GET", "/v1/files", 401)]:
        r = httpx.request(method, server.url + path, headers=h if status != 401 else {})
        assert r.status_code == status
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(server.base_url + "/files?limit=abc", headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_upload_limits_leave_nothing_behind(server):
    h = {"Authorization": f"Bearer {server.key_a}"}
    # A 2 GB declared upload is refused before any byte of the body is sent.
    import json as _json
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key_a}\r\n"
                f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {2 * 1024**3}\r\n\r\n"
            ).encode()
        )
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert _json.loads(body)["error"]["code"] == "payload_too_large"
    # Empty and binary files are stored and reported, never a 500.
    for name, data in [("empty.jsonl", b""), ("garbage.bin", bytes(range(256)) * 100), ("utf.jsonl", b"\xff\xfe{}\n")]:
        r = httpx.post(
            server.base_url + "/files", headers=h, files={"file": (name, data)}, data={"purpose": "fine-tune"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "error"
    # Not multipart, missing file, missing purpose.
    assert httpx.post(server.base_url + "/files", headers=h, json={"a": 1}).json()["error"]["param"] == "file"
    r = httpx.post(server.base_url + "/files", headers=h, data={"purpose": "fine-tune"}, files={"x": ("a", b"1")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(server.base_url + "/files", headers=h, files={"file": ("a.jsonl", GOOD)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    tmp = server.data_dir / "files" / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


@pytest.mark.parametrize("read", ["validation", "list_after"])
def test_an_expired_file_read_by_any_route_is_gone_with_its_bytes(server, read):
    import time

    import sqlalchemy

    client = server.client(server.key_a)
    f = client.files.create(file=("old.jsonl", io.BytesIO(b'{"custom_id": "a"}\n')), purpose="batch")
    url = server.env.get("TUNEGATE_DATABASE_URL") or f"sqlite:///{server.data_dir / 'tunegate.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        key = conn.execute(sqlalchemy.text("SELECT path FROM files WHERE id = :id"), {"id": f.id}).scalar_one()
        conn.execute(
            sqlalchemy.text("UPDATE files SET expires_at = :t WHERE id = :id"), {"t": int(time.time()) - 1, "id": f.id}
        )
    stored = server.data_dir / key
    assert stored.exists()
    headers = {"Authorization": f"Bearer {server.key_a}"}
    if read == "validation":
        r = httpx.get(f"{server.base_url}/files/{f.id}/validation", headers=headers)
    else:
        r = httpx.get(f"{server.base_url}/files", params={"after": f.id}, headers=headers)
    assert r.status_code == 404 and r.json()["error"]["param"]
    assert not stored.exists()  # expiry removes the bytes whichever route found it, not only the row
