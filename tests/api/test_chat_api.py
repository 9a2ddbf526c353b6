"""Chat completions through the official openai SDK against a real server: base and fine-tuned
(produced by the jobs flow), streaming, n, stop, seed, exact usage, errors and isolation; a damaged
adapter failing once while other models keep serving; a client that goes away freeing its slots;
request bounds and per-key limits with OpenAI's rate-limit headers."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import time

import httpx
import openai
import pytest

from tests.conftest import tiny_server_env
from tests.server import RunningServer, wait_for_job
from tunegate.train.checkpoints import write_manifest

DATA = (
    "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Tell me about item {i}."},
                    {"role": "assistant", "content": f"Item {i} is a fine item."},
                ]
            }
        )
        for i in range(20)
    )
    + "\n"
).encode()
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, tiny_model_path):
    data_dir = tmp_path_factory.mktemp("chat") / "data"
    with RunningServer(data_dir, tiny_server_env(tiny_model_path, TUNEGATE_TORCH_THREADS="1")) as srv:
        srv.key_a, srv.key_b = srv.create_key("chat-a"), srv.create_key("chat-b")
        c = srv.client(srv.key_a)
        f = c.files.create(file=("t.jsonl", io.BytesIO(DATA)), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(
            model="tiny",
            training_file=f.id,
            suffix="chat",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        )
        job = wait_for_job(c, job.id, 600)
        assert job.status == "succeeded", job.error
        srv.ft_model = job.fine_tuned_model
        yield srv


@pytest.fixture(scope="module")
def tokenizer_tiny(tiny_model_path):
    from tunegate.catalog import load_tokenizer

    return load_tokenizer(tiny_model_path)


@pytest.mark.parametrize("model_attr", ["base", "ft"])
def test_non_streaming_and_streaming_agree_with_exact_usage(chat_server, tokenizer_tiny, model_attr):
    from tunegate.catalog.template import render

    model = "tiny" if model_attr == "base" else chat_server.ft_model
    c = chat_server.client(chat_server.key_a)
    r = c.chat.completions.create(model=model, messages=MSGS, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == model and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    prompt_ids = tokenizer_tiny(render(tokenizer_tiny, MSGS, add_generation_prompt=True), add_special_tokens=False)[
        "input_ids"
    ]
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 12

    chunks = list(
        c.chat.completions.create(
            model=model,
            messages=MSGS,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1]) == choice.message.content
    assert len({ch.id for ch in chunks}) == 1


def test_n_seed_and_stop(chat_server):
    c = chat_server.client(chat_server.key_a)
    kw = dict(model="tiny", messages=MSGS, max_tokens=10, temperature=1.0)
    two = c.chat.completions.create(n=2, seed=5, **kw)
    assert [ch.index for ch in two.choices] == [0, 1]
    again = c.chat.completions.create(n=2, seed=5, **kw)
    assert [ch.message.content for ch in two.choices] == [ch.message.content for ch in again.choices]
    greedy = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=16, temperature=0)
    text = greedy.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_unknown_and_other_orgs_models_are_404(chat_server):
    a, b = chat_server.client(chat_server.key_a), chat_server.client(chat_server.key_b)
    for client, model in ((a, "no-such-model"), (b, chat_server.ft_model), (a, chat_server.ft_model + "x")):
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model=model, messages=MSGS, max_tokens=4)
        assert e.value.body["code"] == "model_not_found"
    assert chat_server.ft_model in [m.id for m in a.models.list().data]
    assert chat_server.ft_model not in [m.id for m in b.models.list().data]
    with pytest.raises(openai.NotFoundError):
        b.models.retrieve(chat_server.ft_model)
    assert a.models.retrieve(chat_server.ft_model).owned_by == "chat-a"
    assert {m.owned_by for m in a.models.list().data if not m.id.startswith("ft:")} == {"tunegate"}


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"temperature": 5}, "temperature"),
        ({"n": 0}, "n"),
        ({"n": 200}, "n"),
        ({"top_p": 2}, "top_p"),
        ({"messages": "hello"}, "messages"),
    ],
)
def test_bad_input_is_400_naming_the_field(chat_server, body, param):
    payload = {"model": "tiny", "messages": MSGS, **body}
    r = httpx.post(
        chat_server.base_url + "/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {chat_server.key_a}"},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_huge_prompt_and_broken_json_then_still_healthy(chat_server):
    h = {"Authorization": f"Bearer {chat_server.key_a}"}
    big = [{"role": "user", "content": "word " * 200_000}]  # ~1 MB
    r = httpx.post(
        chat_server.base_url + "/chat/completions", json={"model": "tiny", "messages": big}, headers=h, timeout=120
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(
        chat_server.base_url + "/chat/completions",
        content=b'{"model": "tiny", "messages": [',
        headers={**h, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    ok = chat_server.client(chat_server.key_a).chat.completions.create(model="tiny", messages=MSGS, max_tokens=3)
    assert ok.choices[0].message.content is not None


def test_damaged_adapter_fails_once_clearly_and_other_models_keep_serving(chat_server):
    """A truncated adapter file: its requests fail with one clear error (remembered, not reloaded in a
    loop), the base and other fine-tuned models keep answering, and a repaired file is served again."""
    a = chat_server.client(chat_server.key_a)
    ckpt = max(m.id for m in a.models.list().data if ":ckpt-step-" in m.id)  # not loaded yet
    with sqlite3.connect(chat_server.data_dir / "tunegate.db") as db:
        # The row holds the checkpoint's storage key, under the data dir.
        folder = (
            chat_server.data_dir / db.execute("select path from checkpoints where model_id = ?", (ckpt,)).fetchone()[0]
        )
    weights = folder / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 3])
    # Damaged before its hashes were recorded (sha256.json agrees with the bad bytes), so the damage reaches the
    # engine; damage after writing is refused earlier, by the hashes (tests/api/test_hardening_faults.py).
    manifest = (folder / "sha256.json").read_bytes()
    write_manifest(folder)
    h = {"Authorization": f"Bearer {chat_server.key_a}"}
    try:
        errors = []
        for _ in range(3):
            r = httpx.post(
                chat_server.base_url + "/chat/completions",
                headers=h,
                timeout=60,
                json={"model": ckpt, "messages": MSGS, "max_tokens": 2},
            )
            errors.append((r.status_code, r.json()["error"]))
        assert len({json.dumps(e, sort_keys=True) for _, e in errors}) == 1  # the same answer every time
        status, error = errors[0]
        assert status == 500 and error["code"] == "model_load_failed" and error["param"] == "model"
        assert "could not be loaded" in error["message"] and "damaged" in error["message"]
        for model in ("tiny", chat_server.ft_model):
            assert a.chat.completions.create(model=model, messages=MSGS, max_tokens=2).choices
        log = chat_server.log_path.read_text()
        assert log.count(f"could not load adapter {folder}") == 1  # read once, not retried per request
    finally:
        weights.write_bytes(original)
        (folder / "sha256.json").write_bytes(manifest)
    time.sleep(0.01)  # a distinct modification time even on coarse filesystem clocks
    weights.touch()
    assert a.chat.completions.create(model=ckpt, messages=MSGS, max_tokens=2).choices  # repaired: tried again


def test_delete_model_rules(chat_server):
    a, b = chat_server.client(chat_server.key_a), chat_server.client(chat_server.key_b)
    with pytest.raises(openai.BadRequestError):
        a.models.delete("tiny")
    with pytest.raises(openai.NotFoundError):
        b.models.delete(chat_server.ft_model)
    ckpt = [m.id for m in a.models.list().data if ":ckpt-step-" in m.id]
    assert ckpt and a.chat.completions.create(model=ckpt[0], messages=MSGS, max_tokens=2).choices
    r = httpx.get(
        f"{chat_server.base_url}/models/{chat_server.ft_model}/content",
        headers={"Authorization": f"Bearer {chat_server.key_a}"},
    )
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"  # a gzip archive of the adapter
    assert a.models.delete(chat_server.ft_model).deleted
    with pytest.raises(openai.NotFoundError):
        a.chat.completions.create(model=chat_server.ft_model, messages=MSGS, max_tokens=2)


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory, tiny_model_path):
    """A server with two batch rows and one request in flight per key: easy to fill, easy to starve."""
    data_dir = tmp_path_factory.mktemp("tight") / "data"
    env = tiny_server_env(
        tiny_model_path,
        TUNEGATE_TORCH_THREADS="1",
        TUNEGATE_MAX_BATCH_SIZE="2",
        TUNEGATE_MAX_N="2",
        TUNEGATE_MAX_OUTPUT_TOKENS="1900",
        TUNEGATE_CHAT_CONCURRENCY_PER_KEY="1",
        TUNEGATE_START_WORKERS="false",
    )
    with RunningServer(data_dir, env) as srv:
        srv.key_a, srv.key_b = srv.create_key("tight-a"), srv.create_key("tight-b")
        srv.admin = srv.create_key("tight-ops", admin=True)
        # The first chat loads the tokenizer, the model and the runtime moderator: not part of any test.
        assert srv.client(srv.key_b).chat.completions.create(model="tiny", messages=MSGS, max_tokens=1).choices
        yield srv


def _stats(srv) -> dict:
    r = httpx.get(srv.base_url + "/serving/stats", headers={"Authorization": f"Bearer {srv.admin}"})
    assert r.status_code == 200, r.text
    return r.json()["models"].get("tiny", {})


@pytest.mark.parametrize(
    "body,param",
    [({"n": 3}, "n"), ({"max_tokens": 1901}, "max_tokens"), ({"max_completion_tokens": 1901}, "max_completion_tokens")],
)
def test_n_and_max_tokens_beyond_what_the_server_serves_are_400(tight_server, body, param):
    r = httpx.post(
        tight_server.base_url + "/chat/completions",
        json={"model": "tiny", "messages": MSGS, **body},
        headers={"Authorization": f"Bearer {tight_server.key_a}"},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert "TUNEGATE_MAX_" in r.json()["error"]["message"]


def test_a_client_that_goes_away_frees_its_slots(tight_server):
    """A heavy non-streaming request fills the whole batch; its client disconnects; a small request
    from someone else is then served at once: the heavy choices were cancelled, not decoded to the end."""
    srv = tight_server
    heavy = json.dumps(
        {"model": "tiny", "messages": MSGS, "n": 2, "max_tokens": 1900, "temperature": 0, "ignore_eos": True}
    ).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {srv.key_a}\r\nContent-Length: {len(heavy)}\r\n\r\n".encode()
        + heavy
    )
    while _stats(srv).get("running") != 2:  # both batch rows are decoding the heavy request
        time.sleep(0.02)
    # Meanwhile the same key may not start another request: a 429 with OpenAI's headers.
    r = httpx.post(
        srv.base_url + "/chat/completions",
        json={"model": "tiny", "messages": MSGS, "max_tokens": 2},
        headers={"Authorization": f"Bearer {srv.key_a}"},
        timeout=60,
    )
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit-requests"] == "1" and r.headers["x-ratelimit-remaining-requests"] == "0"
    sock.close()  # the client goes away without reading anything

    small = srv.client(srv.key_b).chat.completions.create(model="tiny", messages=MSGS, max_tokens=3, temperature=0)
    stats = _stats(srv)
    assert small.choices[0].finish_reason == "length"
    assert stats["cancelled_sequences"] == 2 and stats["decode_steps"] < 1899  # the heavy one never finished
    assert stats["torch_threads"] == 1  # TUNEGATE_TORCH_THREADS, as read in the engine's own thread
    # The key's concurrency lease was returned with the cancelled request.
    assert srv.client(srv.key_a).chat.completions.create(model="tiny", messages=MSGS, max_tokens=2).choices
