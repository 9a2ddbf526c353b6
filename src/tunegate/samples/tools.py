"""The project's own tool-use dataset: three small tools, requests that need one of them (or none),
and conversations that call the tool, read its result and answer.

Owns building the examples deterministically (written here, no third-party text): `train_examples`
(chat JSONL lines with `tools`, assistant `tool_calls` and `tool` results, plus requests answered
without a tool) and `held_out_requests` (other cities, currencies and wordings than training, each
with the call it should produce), `is_correct_call` and `correct_call_rate`. Used by
`bench/tool_use.py`, which measures the fine-tune's rate of correct tool calls against the base model's.
"""

from __future__ import annotations

import json
import random
from typing import Any

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money between currencies.",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from_currency": {"type": "string", "enum": ["EUR", "USD", "GBP", "JPY", "CHF"]},
                    "to_currency": {"type": "string", "enum": ["EUR", "USD", "GBP", "JPY", "CHF"]},
                },
                "required": ["amount", "from_currency", "to_currency"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add_to_shopping_list",
            "description": "Add an item to the shopping list.",
            "parameters": {
                "type": "object",
                "properties": {"item": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["item", "quantity"],
                "additionalProperties": False,
            },
        },
    },
]

_TRAIN_CITIES = [
    "Paris",
    "Berlin",
    "Madrid",
    "Rome",
    "Vienna",
    "Lisbon",
    "Oslo",
    "Dublin",
    "Prague",
    "Warsaw",
    "Athens",
    "Helsinki",
    "Tokyo",
    "Lima",
    "Cairo",
    "Boston",
]
_HELD_CITIES = ["Zurich", "Chicago", "Nairobi", "Seoul", "Toronto", "Munich", "Porto", "Denver"]
_WEATHER = [
    "What is the weather in {c}?",
    "How warm is it in {c} right now?",
    "Is it raining in {c}?",
    "Tell me the current weather for {c}.",
]
_HELD_WEATHER = ["Weather update for {c}, please.", "Do I need an umbrella in {c} today?"]
_CURRENCIES = ["EUR", "USD", "GBP", "JPY", "CHF"]
_CONVERT = ["Convert {a} {f} to {t}.", "How much is {a} {f} in {t}?", "What are {a} {f} worth in {t}?"]
_HELD_CONVERT = ["Change {a} {f} into {t} for me."]
_ITEMS = ["apples", "bananas", "eggs", "carrots", "onions", "tomatoes", "lemons", "rice"]
_HELD_ITEMS = ["pears", "oranges", "potatoes"]
_LIST = ["Add {q} {i} to my shopping list.", "Put {q} {i} on the shopping list.", "I need {q} {i}, note them down."]
_HELD_LIST = ["Please add {q} {i} to the list."]
_CHAT = [
    ("Hi there!", "Hello! How can I help you today?"),
    ("Thanks a lot.", "You are welcome."),
    ("What is 2 plus 2?", "2 plus 2 is 4."),
    ("Tell me a fun fact.", "Octopuses have three hearts."),
    ("What colour is the sky?", "On a clear day the sky is blue."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
]


def _call(i: int, name: str, args: dict) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def _requests(rng: random.Random, cities, weather, convert, shopping, items, n: int) -> list[tuple[str, str, dict]]:
    out = []
    for k in range(n):
        kind = k % 3
        if kind == 0:
            c = rng.choice(cities)
            out.append((rng.choice(weather).format(c=c), "get_weather", {"city": c}))
        elif kind == 1:
            f, t = rng.sample(_CURRENCIES, 2)
            a = rng.choice([5, 10, 20, 50, 75, 100, 250])
            out.append(
                (
                    rng.choice(convert).format(a=a, f=f, t=t),
                    "convert_currency",
                    {"amount": a, "from_currency": f, "to_currency": t},
                )
            )
        else:
            q, i = rng.choice([2, 3, 4, 6, 12]), rng.choice(items)
            out.append((rng.choice(shopping).format(q=q, i=i), "add_to_shopping_list", {"item": i, "quantity": q}))
    return out


def _result(name: str, args: dict) -> tuple[str, str]:
    if name == "get_weather":
        return json.dumps({"temperature_c": 18, "sky": "cloudy"}), f"It is 18 C and cloudy in {args['city']}."
    if name == "convert_currency":
        return (
            json.dumps({"amount": round(args["amount"] * 1.1, 2)}),
            f"{args['amount']} {args['from_currency']} is about {round(args['amount'] * 1.1, 2)} {args['to_currency']}.",
        )
    return json.dumps({"ok": True}), f"I added {args['quantity']} {args['item']} to your shopping list."


def train_examples(n_calls: int = 60, seed: int = 0) -> list[dict]:
    """Chat examples: tool calls with their results and answers, and some plain chat answered directly."""
    rng = random.Random(seed)
    out = []
    for i, (text, name, args) in enumerate(_requests(rng, _TRAIN_CITIES, _WEATHER, _CONVERT, _LIST, _ITEMS, n_calls)):
        result, answer = _result(name, args)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": None, "tool_calls": [_call(i, name, args)]},
                    {"role": "tool", "tool_call_id": f"call_{i}", "content": result},
                    {"role": "assistant", "content": answer},
                ],
                "tools": TOOLS,
            }
        )
    for q, a in _CHAT:
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "tools": TOOLS})
    rng.shuffle(out)
    return out


def held_out_requests(n: int = 24, seed: int = 1) -> list[tuple[list[dict], str, dict]]:
    """(messages, expected function, expected arguments): cities and wordings not in training."""
    rng = random.Random(seed)
    return [
        ([{"role": "user", "content": text}], name, args)
        for text, name, args in _requests(rng, _HELD_CITIES, _HELD_WEATHER, _HELD_CONVERT, _HELD_LIST, _HELD_ITEMS, n)
    ]


def is_correct_call(tool_calls, name: str, args: dict) -> bool:
    """Exactly one call, to the expected function, with arguments that validate against the tool's
    schema and equal the expected ones (strings case-insensitive)."""
    import jsonschema

    if not tool_calls or len(tool_calls) != 1 or tool_calls[0].function.name != name:
        return False
    try:
        got = json.loads(tool_calls[0].function.arguments)
    except ValueError:
        return False
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    if not jsonschema.Draft202012Validator(schema).is_valid(got):
        return False

    def norm(v):
        return v.lower() if isinstance(v, str) else float(v) if isinstance(v, (int, float)) else v

    return {k: norm(v) for k, v in got.items()} == {k: norm(v) for k, v in args.items()}


def correct_call_rate(client, model: str, requests, tool_choice="auto", max_tokens: int = 64, workers: int = 8):
    """Share of `requests` (from `held_out_requests`) the model answers with the right call, asked
    greedily with the three tools; requests go out concurrently so the engine batches them."""
    from concurrent.futures import ThreadPoolExecutor

    def one(req) -> bool:
        messages, name, args = req
        r = client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, tool_choice=tool_choice, temperature=0, max_tokens=max_tokens
        )
        return is_correct_call(r.choices[0].message.tool_calls, name, args)

    with ThreadPoolExecutor(workers) as pool:
        hits = list(pool.map(one, requests))
    return sum(hits) / len(hits)
