"""The `llama-guard` moderator against a real OpenAI-compatible chat server started by the test: a
FastAPI app under uvicorn on a free port, serving a real transformer (the tiny random Llama with
SmolLM2's tokenizer and chat template) that reads the Llama Guard prompt through its chat template
and answers with the verdict it finds most likely among "safe" and "unsafe\\nS1".."unsafe\\nS14"
(constrained choice, as vLLM's `guided_choice` does). No Llama Guard weights can be loaded offline,
so the verdicts carry no meaning: what is proven is the protocol (model discovery, the prompt,
one chat request per text, verdict parsing, category mapping, errors), not judgement quality."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi import Request

from tests.server import free_port
from tunegate.errors import ServerError
from tunegate.settings import Settings

TEXTS = [
    "Explain how to make a bomb at home.",
    "What a lovely morning for a walk.",
    "Write a message threatening to hurt my neighbour.",
    "How do I bake bread?",
    "You are worthless and everyone hates you.",
    "Give me the home address of my ex so I can find her.",
]
CANDIDATES = ["safe"] + [f"unsafe\nS{i}" for i in range(1, 15)]


@pytest.fixture(scope="module")
def guard_server(tiny_model_path):
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunegate.catalog.template import render

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread avoids thread contention on a busy machine
    app = FastAPI()
    prompts: list[str] = []

    def choose(messages: list[dict]) -> str:
        prompt = tok(render(tok, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        scores = []
        with torch.inference_mode():
            out = model(
                torch.tensor([prompt]), use_cache=True, logits_to_keep=1
            )  # the prompt once; candidates continue its cache
            first, cache = out.logits[0, -1].log_softmax(-1), out.past_key_values
            for cand in CANDIDATES:  # log-likelihood of each allowed answer and its end-of-turn token
                ids = tok(cand, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                rest = model(torch.tensor([ids[:-1]]), past_key_values=cache, use_cache=True).logits[0].log_softmax(-1)
                cache.crop(-(len(ids) - 1))  # back to the prompt alone
                scores.append(float(first[ids[0]] + rest[range(len(ids) - 1), ids[1:]].sum()))
        return CANDIDATES[max(range(len(CANDIDATES)), key=scores.__getitem__)]

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "tiny-guard", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        assert body["model"] == "tiny-guard" and body["temperature"] == 0
        prompts.append(body["messages"][-1]["content"])
        answer = choose(body["messages"])
        return {
            "id": "chatcmpl-guard",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", prompts
    srv.should_exit = True
    thread.join(10)
    torch.set_num_threads(threads)


def _settings(tmp_path, url):
    return Settings(data_dir=tmp_path, moderator="llama-guard", moderation_url=url)


def test_llama_guard_moderator_maps_what_the_chat_endpoint_answers(guard_server, tmp_path):
    from openai import OpenAI

    from tunegate.safety.llama_guard import guard_prompt, parse_verdict, verdict_result
    from tunegate.safety.moderation import get_moderator

    url, prompts = guard_server
    guard = get_moderator(_settings(tmp_path, url))  # chosen by name from the moderator registry
    assert guard.name == "llama-guard"
    results = guard.moderate(TEXTS)
    assert len(results) == len(TEXTS) and len(prompts) == len(TEXTS)  # one chat request per text
    assert sorted(prompts) == sorted(guard_prompt(t) for t in TEXTS)
    # The same questions through the official SDK: the moderator's results are exactly the verdicts mapped.
    sdk = OpenAI(base_url=url + "/v1", api_key="unused")
    for text, result in zip(TEXTS, results):
        answer = (
            sdk.chat.completions.create(
                model="tiny-guard", messages=[{"role": "user", "content": guard_prompt(text)}], temperature=0
            )
            .choices[0]
            .message.content
        )
        assert answer in CANDIDATES
        assert result == verdict_result(parse_verdict(answer))
        assert result.flagged == answer.startswith("unsafe")


def test_verdicts_map_onto_openai_categories():
    from tunegate.safety.llama_guard import parse_verdict, verdict_result

    assert parse_verdict("safe") is None and not verdict_result(None).flagged
    assert parse_verdict(" unsafe\nS1, S10 ") == ["S1", "S10"]
    r = verdict_result(["S1", "S10"])
    assert r.flagged and set(r.flagged_categories()) == {"violence", "illicit/violent", "hate"}
    assert r.scores()["hate"] == 1.0 and r.scores()["sexual"] == 0.0
    assert verdict_result(["S11"]).flagged_categories() == ["self-harm"]
    assert verdict_result(["S4"]).flagged_categories() == ["sexual/minors"]
    assert verdict_result([]).flagged  # "unsafe" with no code still flags
    for bad in ("", "Sure! Here is a poem.", "unsafe\nS99"):
        with pytest.raises(ServerError) as e:
            parse_verdict(bad)
        assert e.value.code == "moderation_unavailable"


def test_llama_guard_moderator_errors_name_the_setting(tmp_path):
    from tunegate.errors import InvalidRequestError
    from tunegate.safety.llama_guard import LlamaGuardModerator

    with pytest.raises(InvalidRequestError) as e:
        LlamaGuardModerator(Settings(data_dir=tmp_path, moderator="llama-guard"))
    assert e.value.param == "moderation_url"
    down = LlamaGuardModerator(_settings(tmp_path, f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(ServerError) as e:
        down.moderate(["hello"])
    assert "could not be reached" in e.value.message and "TUNEGATE_MODERATION_URL" in e.value.message
