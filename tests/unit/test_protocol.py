"""Chat-completions protocol: request validation (400 with `param`), context checks, exact usage,
`n`, `stop`, `seed`, logprobs, and OpenAI's chunk sequence, through the service on a tiny model."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
from pydantic import ValidationError

from tunegate.catalog import get_base_model
from tunegate.catalog.template import render
from tunegate.errors import InvalidRequestError, from_validation_errors
from tunegate.serve.engine import ServableModel
from tunegate.serve.hf_engine import HFEngine
from tunegate.serve.protocol import ChatCompletionRequest
from tunegate.serve.service import ChatService

USER = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


def body(**kw):
    return {"model": "tiny", "messages": USER, **kw}


def parse_request(data) -> ChatCompletionRequest:
    """What the route does with a JSON body: validate it, every problem in one 400 (api/errors.py)."""
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"temperature": 5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 200}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": "hello"}, "messages"),
    ],
)
def test_invalid_values_are_400_naming_the_field(fields, param):
    with pytest.raises(InvalidRequestError) as err:
        parse_request(body(**fields))
    assert err.value.status_code == 400 and err.value.param == param
    assert f"`{param}`" in err.value.message


def test_top_logprobs_needs_logprobs():
    with pytest.raises(InvalidRequestError, match="logprobs"):
        parse_request(body(top_logprobs=2))


def test_all_roles_and_unknown_fields_are_accepted():
    roles = ["system", "developer", "user", "assistant", "tool", "function"]
    req = parse_request(body(messages=[{"role": r, "content": "x"} for r in roles], brand_new_option={"a": 1}))
    assert [m.role for m in req.messages] == roles and req.model_extra == {"brand_new_option": {"a": 1}}


@pytest.fixture(scope="module")
def served(tiny_model_path, tmp_path_factory):
    from tests.conftest import MODEL_CACHE
    from tunegate.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("d"),
        model_cache_dir=MODEL_CACHE,
        base_models={"tiny": tiny_model_path},
        torch_threads=1,
    )
    base = get_base_model("tiny", settings)
    engine = HFEngine(settings)
    loop = asyncio.new_event_loop()
    yield ChatService(engine), ServableModel("tiny", base, None), loop
    loop.run_until_complete(engine.stop())
    loop.close()


def create(served, **kw):
    service, model, loop = served
    return loop.run_until_complete(service.create(parse_request(body(**kw)), model))


def stream(served, **kw):
    service, model, loop = served

    async def go():
        return [c.to_dict() async for c in await service.stream(parse_request(body(stream=True, **kw)), model)]

    return loop.run_until_complete(go())


def test_usage_counts_the_rendered_prompt_exactly(served):
    service, model, _ = served
    messages = [
        {"role": "system", "content": "Be brief."},
        *USER,
        {"role": "assistant", "content": "Once"},
        {"role": "user", "content": "Go on ✨"},
    ]
    tok = service.engine.tokenizer(model.base)
    expected = len(tok(render(tok, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
    r = create(served, messages=messages, max_tokens=7, temperature=0)
    assert r.usage.prompt_tokens == expected
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == expected + 7


def test_context_checks(served):
    with pytest.raises(InvalidRequestError) as err:
        create(served, messages=[{"role": "user", "content": "word " * 250_000}])  # ~1 MB prompt
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    with pytest.raises(InvalidRequestError) as err:
        create(served, max_tokens=10**9)
    assert err.value.param == "max_tokens" and "2048" in err.value.message
    with pytest.raises(InvalidRequestError) as err:
        create(served, max_completion_tokens=2040)
    assert err.value.code == "context_length_exceeded" and err.value.param == "max_completion_tokens"
    assert create(served, max_tokens=2, temperature=0).usage.completion_tokens == 2  # still serving


def test_seed_reproducibility_and_n_choices(served):
    a = create(served, n=3, seed=42, temperature=1.0, max_tokens=12)
    b = create(served, n=3, seed=42, temperature=1.0, max_tokens=12)
    c = create(served, n=3, seed=43, temperature=1.0, max_tokens=12)
    texts = lambda r: [ch.message.content for ch in r.choices]  # noqa: E731
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert texts(a) == texts(b) and texts(a) != texts(c)
    assert len(set(texts(a))) == 3  # the choices of one seeded request differ from each other
    if all(ch.finish_reason == "length" for ch in a.choices):
        assert a.usage.completion_tokens == 3 * 12  # counted over all choices, the prompt once


def test_stop_cuts_exactly_and_is_never_emitted(served):
    full = create(served, seed=5, max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    cut = full[: full.find(stop)]
    r = create(served, seed=5, max_tokens=24, stop=[stop, "\u2603never"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    chunks = stream(served, seed=5, max_tokens=24, stop=stop)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == cut


def test_stream_chunks_follow_openai(served):
    whole = create(served, temperature=0, max_tokens=9, logprobs=True, top_logprobs=3)
    chunks = stream(served, temperature=0, max_tokens=9, stream_options={"include_usage": True})
    first, *middle, final, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(
        set(c["choices"][0]["delta"]) == {"content"} and c["choices"][0]["finish_reason"] is None for c in middle
    )
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == whole.choices[0].message.content
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"] == whole.usage.model_dump()
    assert all("usage" not in c for c in chunks[:-1]) and len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # Greedy: the chosen token is the top one; top_logprobs are sorted; bytes rebuild the content.
    content = whole.choices[0].logprobs.content
    assert len(content) == 9
    for t in content:
        assert t.top_logprobs[0].token == t.token and math.isclose(t.top_logprobs[0].logprob, t.logprob)
        assert [x.logprob for x in t.top_logprobs] == sorted((x.logprob for x in t.top_logprobs), reverse=True)
    assert bytes(b for t in content for b in t.bytes).decode() == whole.choices[0].message.content


def test_unknown_fields_are_logged(served, caplog):
    with caplog.at_level(logging.INFO, logger="tunegate.serve"):
        create(served, max_tokens=1, future_knob=True)
    assert "future_knob" in caplog.text
