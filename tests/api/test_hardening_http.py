"""The HTTP edge under hostile clients: no key means no body read, bodies limited as they stream,
slow clients timed out (real sockets on 127.0.0.1), and the headers every response carries."""

from __future__ import annotations

import socket
import time

import httpx
import pytest


@pytest.fixture(scope="module")
def server(hardened_server):
    hardened_server.key_a = hardened_server.create_key("org-http")
    return hardened_server


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].rstrip().endswith(b"}"):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_chunked_body_without_key_is_refused_before_it_is_read(server):
    """Headers plus the first chunk of a would-be 200 MB chunked body, no key: 401 comes back at once."""
    sock = _connect(server)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"100000\r\n" + b"{" * 65536
    )
    response = _read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 401"), response[:200]
    assert b"invalid_api_key" in response


def test_chunked_body_over_the_limit_is_cut_off_as_it_streams(server):
    """No Content-Length to check up front: the limit is applied to the bytes as they arrive."""
    sock = _connect(server)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + server.key_a.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * (1024 * 1024)
    sent = 0
    try:
        for _ in range(40):  # 40 MB offered against the 16 MB JSON limit
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    response = _read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"payload_too_large" in response


def test_headers_that_never_finish_are_timed_out(server):
    sock = _connect(server)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    start = time.monotonic()
    sock.settimeout(15)
    try:
        while True:  # a byte every 0.3 s: never idle, never finished
            sock.sendall(b"a")
            time.sleep(0.3)
            if time.monotonic() - start > 12:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    closed_after = time.monotonic() - start
    sock.close()
    assert closed_after < 10, "a connection dripping its headers was never closed"


def test_a_body_that_stalls_gets_408(server):
    sock = _connect(server)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + server.key_a.encode() + b'\r\nContent-Length: 100\r\n\r\n{"mod'
    )
    response = _read_response(sock, timeout=15)
    sock.close()
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"request_timeout" in response


def test_concurrent_uploads_per_key_are_capped(server):
    """One slow upload holds the key's only upload slot; a second concurrent one gets 429."""
    sock = _connect(server)
    boundary = b"b0undary"
    head = (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--'
        + boundary
        + b'\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
    )
    sock.sendall(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + server.key_a.encode()
        + b"\r\nContent-Type: multipart/form-data; boundary="
        + boundary
        + b"\r\nContent-Length: 100000\r\n\r\n"
        + head
    )

    def upload_until(name: str, content: bytes, done, seconds: float) -> httpx.Response:
        """Upload a small file until `done(response)` or the time is up; the last response."""
        deadline = time.time() + seconds
        while True:
            r = httpx.post(
                server.base_url + "/files",
                headers={"Authorization": f"Bearer {server.key_a}"},
                files={"file": (name, content)},
                data={"purpose": "fine-tune"},
                timeout=30,
            )
            if done(r) or time.time() > deadline:
                return r
            time.sleep(0.2)

    # The slot is taken once the server has started reading the slow upload, which on a loaded
    # machine can take longer than any fixed pause: ask until it answers 429 (an earlier answer is a
    # small upload that went through before the slot was taken), well within the body timeout.
    second = upload_until("b.jsonl", b"{}\n", lambda r: r.status_code == 429, 8)
    sock.close()
    assert second.status_code == 429, second.text
    assert second.json()["error"]["code"] == "too_many_uploads"
    assert "retry-after" in second.headers
    # Once the slow upload is gone (408 or closed), the slot is free again.
    third = upload_until("c.jsonl", b'{"messages": []}\n', lambda r: r.status_code != 429, 10)
    assert third.status_code == 200, third.text


def test_every_response_has_nosniff_and_a_request_id(server):
    client = server.client(server.key_a)
    raw = client.models.with_raw_response.list()
    assert raw.headers["x-content-type-options"] == "nosniff"
    assert raw.request_id and raw.request_id.startswith("req_")
    for r in (
        httpx.get(server.url + "/health"),
        httpx.get(server.base_url + "/models"),
        httpx.get(server.url + "/nope"),
        httpx.get(server.url + "/"),
    ):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-request-id"], r.url
    mine = httpx.get(
        server.base_url + "/models", headers={"Authorization": f"Bearer {server.key_a}", "x-request-id": "trace-123"}
    )
    assert mine.headers["x-request-id"] == "trace-123"


def test_every_4xx_has_a_code(server):
    h = {"Authorization": f"Bearer {server.key_a}"}
    cases = [
        httpx.get(server.url + "/v1/nope", headers=h),
        httpx.put(server.base_url + "/models", headers=h),
        httpx.get(server.base_url + "/files/file-nope", headers=h),
        httpx.post(server.base_url + "/chat/completions", headers=h, content=b"{not json"),
        httpx.get(server.base_url + "/admin/audit", headers=h),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"]["code"], (r.request.url, r.text)


def test_docs_load_nothing_from_a_cdn(server):
    assert httpx.get(server.url + "/docs").status_code == 404
    assert httpx.get(server.url + "/redoc").status_code == 404
    assert httpx.get(server.url + "/openapi.json").status_code == 200
