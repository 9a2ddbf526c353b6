"""Core pieces: streamed uploads, API keys and organisations, settings, audit."""

import asyncio
import hashlib

import pytest

from tunegate import audit
from tunegate.auth import authenticate, create_key, ensure_admin_key, hash_key, read_admin_key
from tunegate.db import ApiKey, open_database
from tunegate.errors import AuthenticationError, InvalidRequestError, PayloadTooLargeError
from tunegate.files.store import receive_upload
from tunegate.settings import Settings


def _body(parts: list[tuple[str, str | None, bytes]], boundary="b0und") -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def _chunks(data: bytes, size=1000):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _receive(body, tmp, limit=10**6, ctype="multipart/form-data; boundary=b0und"):
    return asyncio.run(receive_upload(ctype, _chunks(body), tmp, limit))


def test_upload_streams_to_disk_with_hash(tmp_path):
    data = bytes(range(256)) * 40
    up = _receive(_body([("purpose", None, b"fine-tune"), ("file", "x.jsonl", data)]), tmp_path)
    assert up.fields == {"purpose": "fine-tune"} and up.filename == "x.jsonl"
    assert up.bytes == len(data) and up.sha256 == hashlib.sha256(data).hexdigest()
    assert up.tmp_path.read_bytes() == data
    up.commit(tmp_path / "final")
    assert (tmp_path / "final").read_bytes() == data and list(tmp_path.glob(".upload-*")) == []


def test_upload_over_limit_leaves_nothing(tmp_path):
    body = _body([("purpose", None, b"fine-tune"), ("file", "x.jsonl", b"x" * 50_000)])
    with pytest.raises(PayloadTooLargeError) as e:
        _receive(body, tmp_path, limit=10_000)
    assert e.value.param == "file"
    assert list(tmp_path.iterdir()) == []


def test_truncated_or_malformed_body_leaves_nothing(tmp_path):
    body = _body([("file", "x.jsonl", b"y" * 5000)])
    with pytest.raises(InvalidRequestError):
        _receive(body[:3000], tmp_path)
    with pytest.raises(InvalidRequestError):
        _receive(b"hello", tmp_path, ctype="application/json")
    assert list(tmp_path.iterdir()) == []


def test_keys_are_hashed_and_authenticate(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/t.db")
    key = create_key(db, "acme")
    admin = create_key(db, "acme", admin=True)
    with db.session() as s:
        stored = [k.key_hash for k in s.query(ApiKey)]
    assert hash_key(key) in stored and key not in stored
    p = authenticate(db, f"Bearer {key}")
    assert p.org_name == "acme" and not p.is_admin
    assert authenticate(db, f"Bearer {admin}").is_admin
    assert authenticate(db, f"Bearer {admin}").org_id == p.org_id
    for bad in (None, "", "Bearer", "Basic abc", f"Bearer {key}x"):
        with pytest.raises(AuthenticationError):
            authenticate(db, bad)
    with pytest.raises(InvalidRequestError):
        create_key(db, "bad name!")
    assert [e["action"] for e in audit.read(db)] == ["key.created", "key.created"]


def test_admin_key_bootstrap_once(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/t.db")
    key = ensure_admin_key(db, tmp_path)
    assert key and read_admin_key(tmp_path) == key and authenticate(db, f"Bearer {key}").is_admin
    assert (tmp_path / "admin_key").stat().st_mode & 0o777 == 0o600
    assert ensure_admin_key(db, tmp_path) is None  # never a second one


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TUNEGATE_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("TUNEGATE_BASE_MODELS", '{"m": "/x"}')
    s = Settings()
    assert s.max_upload_bytes == 1234 and s.db_url.endswith("tunegate.db") and str(tmp_path) in s.db_url
    assert s.base_models == {"m": tmp_path.__class__("/x")}
    assert Settings(database_url="postgresql://u@h/db").db_url == "postgresql://u@h/db"
