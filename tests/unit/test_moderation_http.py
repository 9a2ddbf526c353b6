"""The `http` moderator against a real OpenAI-compatible moderation server on a free port (a tiny
FastAPI app under uvicorn, answering with the built-in classifier), not a mock."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from fastapi import Request

from tests.server import free_port
from tunegate.errors import ServerError
from tunegate.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
from tests.conftest import MODEL_CACHE  # the classifier is cached beside the converted models

SAFETY_CACHE = Path(os.environ.get("TUNEGATE_TEST_SAFETY_CACHE", ROOT / ".cache" / "safety"))


@pytest.fixture(scope="module")
def builtin():
    from tunegate.safety.moderation import get_moderator

    return get_moderator(Settings(data_dir=SAFETY_CACHE, model_cache_dir=MODEL_CACHE))


@pytest.fixture(scope="module")
def server(builtin):
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from tunegate.errors import TunegateError
    from tunegate.safety.moderation import create_response
    from tunegate.safety.schemas import ModerationCreateRequest, parse_moderation_input

    app = FastAPI()
    calls: list[int] = []

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        try:
            req = ModerationCreateRequest.model_validate(await request.json())
            texts = parse_moderation_input(req)
        except TunegateError as e:
            return JSONResponse(e.to_dict(), status_code=e.status_code)
        calls.append(len(texts))
        return create_response(builtin, texts, req.model).model_dump(mode="json")

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", calls
    srv.should_exit = True
    thread.join(10)


def test_http_moderator_returns_what_the_server_answers(server, builtin):
    from tunegate.safety.moderation import get_moderator

    url, calls = server
    http = get_moderator(
        Settings(data_dir=SAFETY_CACHE, model_cache_dir=MODEL_CACHE, moderator="http", moderation_url=url + "/v1")
    )
    texts = [
        "Explain how to make a bomb at home.",
        "What a lovely morning for a walk.",
        "Write a message threatening to hurt my neighbour.",
    ]
    got = http.moderate(texts)
    want = builtin.moderate(texts)
    assert [r.flagged for r in got] == [r.flagged for r in want]
    for g, w in zip(got, want):
        assert g.scores() == pytest.approx(w.scores(), abs=1e-6)
    assert calls[-1] == len(texts)


def test_http_moderator_splits_large_batches(server):
    from tunegate.safety.moderation import HttpModerator
    from tunegate.safety.schemas import MAX_INPUTS

    url, calls = server
    http = HttpModerator(
        Settings(data_dir=SAFETY_CACHE, model_cache_dir=MODEL_CACHE, moderator="http", moderation_url=url)
    )  # without /v1 works too
    n = MAX_INPUTS + 3
    results = http.moderate([f"Tell me a fact about the number {i}." for i in range(n)])
    assert len(results) == n
    assert calls[-2:] == [MAX_INPUTS, 3]


def test_http_moderator_reports_server_errors(server):
    from tunegate.safety.moderation import HttpModerator

    url, _ = server
    http = HttpModerator(
        Settings(data_dir=SAFETY_CACHE, model_cache_dir=MODEL_CACHE, moderator="http", moderation_url=url)
    )
    with pytest.raises(ServerError) as e:
        http.moderate(["   "])  # the server rejects blank input with a 400
    assert "400" in e.value.message and e.value.code == "moderation_unavailable"
    down = HttpModerator(
        Settings(
            data_dir=SAFETY_CACHE,
            model_cache_dir=MODEL_CACHE,
            moderator="http",
            moderation_url=f"http://127.0.0.1:{free_port()}",
        )
    )
    with pytest.raises(ServerError) as e:
        down.moderate(["hello"])
    assert "could not be reached" in e.value.message
