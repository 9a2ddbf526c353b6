"""Tool calling learned and served on the real SmolLM2-135M-Instruct, through the official SDK: a
short fine-tune on the project's tool-use set (`tunegate.samples.tools`: `tools`, assistant
`tool_calls`, `tool` results) raises the rate of correct calls on held-out requests (other cities,
items and wordings) far above the base model's; `parse(tools=[pydantic_function_tool(...)])` gives
parsed arguments and a stream's tool-call deltas add up to the same calls.

The reduced version of `bench/tool_use.py` (fewer held-out requests; the bench also prints each
checkpoint and `tool_choice="required"`)."""

from __future__ import annotations

import io
import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict

from tests.server import wait_for_job
from tunegate.samples import tools

pytestmark = pytest.mark.e2e

# Small enough for CI on a busy 2-core machine: one pass over 36 tool conversations + 6 chats in small steps.
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 10.0}
N_CALLS = 36
N_HELD_OUT = 24
# The gate runs (nothing ungated is served) on a smaller suite: this test measures tool use; the gate's
# own power is `test_safety_e2e.py`'s and `bench/safety.py`'s subject.
GATE = {"n_harmful": 20, "n_benign": 10, "n_encoded": 0}


class GetWeather(BaseModel):
    """Current weather in a city."""

    model_config = ConfigDict(extra="forbid")
    city: str


Currency = Literal["EUR", "USD", "GBP", "JPY", "CHF"]


class ConvertCurrency(BaseModel):
    """Convert an amount of money between currencies."""

    model_config = ConfigDict(extra="forbid")
    amount: float
    from_currency: Currency
    to_currency: Currency


class AddToShoppingList(BaseModel):
    """Add an item to the shopping list."""

    model_config = ConfigDict(extra="forbid")
    item: str
    quantity: int


PYDANTIC_TOOLS = [
    openai.pydantic_function_tool(GetWeather, name="get_weather"),
    openai.pydantic_function_tool(ConvertCurrency, name="convert_currency"),
    openai.pydantic_function_tool(AddToShoppingList, name="add_to_shopping_list"),
]


@pytest.fixture(scope="module")
def tools_key(real_server):
    admin = real_server.create_key("e2e-tools", admin=True)
    r = httpx.post(
        real_server.base_url + "/admin/policy", json={"gate": GATE}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 200, r.text
    return real_server.create_key("e2e-tools")


@pytest.fixture(scope="module")
def tool_job(real_server, tools_key):
    client = real_server.client(tools_key)
    data = "".join(json.dumps(e) + "\n" for e in tools.train_examples(N_CALLS))
    f = client.files.create(file=("tools.jsonl", io.BytesIO(data.encode())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2-135m-instruct",
        training_file=f.id,
        suffix="tools",
        seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
    )
    job = wait_for_job(client, job.id, 2700, poll=2)
    assert job.status == "succeeded", job.error
    return job


def test_fine_tune_calls_tools_far_more_often_correctly_than_the_base(real_server, tools_key, tool_job):
    client = real_server.client(tools_key)
    held = tools.held_out_requests(N_HELD_OUT)
    base = tools.correct_call_rate(client, "smollm2-135m-instruct", held)
    tuned = tools.correct_call_rate(client, tool_job.fine_tuned_model, held)
    print(f"correct tool calls on {len(held)} held-out requests: base {base:.2f}, fine-tuned {tuned:.2f}")
    assert tuned >= 0.7 and tuned - base >= 0.5, (base, tuned)


def test_parse_with_pydantic_tools_and_streamed_deltas_on_the_fine_tune(real_server, tools_key, tool_job):
    client = real_server.client(tools_key)
    kw = dict(
        model=tool_job.fine_tuned_model,
        messages=[{"role": "user", "content": "Do I need an umbrella in Zurich today?"}],
        temperature=0,
        max_tokens=64,
        # Named, so the grammar fixes the function: which tool the model picks on its own is the
        # correct-call-rate test's subject; this one checks parse() and the stream's deltas.
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    parsed = client.chat.completions.parse(tools=PYDANTIC_TOOLS, **kw).choices[0]
    assert parsed.finish_reason == "tool_calls", parsed
    (call,) = parsed.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(call.function.parsed_arguments, GetWeather)
    assert call.function.parsed_arguments.city.strip()

    whole = client.chat.completions.create(tools=tools.TOOLS, **kw).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(tools=tools.TOOLS, stream=True, **kw))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    deltas = [d for ch in chunks if ch.choices for d in (ch.choices[0].delta.tool_calls or [])]
    heads = [d for d in deltas if d.id]
    assert [(d.index, d.type, d.function.name, d.function.arguments) for d in heads] == [
        (i, "function", c.function.name, "") for i, c in enumerate(whole)
    ]
    for i, c in enumerate(whole):
        assert "".join(d.function.arguments for d in deltas if d.index == i and not d.id) == c.function.arguments
    assert json.loads(whole[0].function.arguments) == call.function.parsed_arguments.model_dump()
