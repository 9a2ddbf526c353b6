"""The project's tool-use set (`tunegate.samples.tools`): training conversations pass validation
shapes, held-out requests are new, and the correct-call check is strict where it must be."""

from __future__ import annotations

import json

from openai.types.chat import ChatCompletionMessageToolCall

from tunegate.samples import tools


def _call(name: str, args) -> ChatCompletionMessageToolCall:
    text = args if isinstance(args, str) else json.dumps(args)
    return ChatCompletionMessageToolCall(id="c", type="function", function={"name": name, "arguments": text})


def test_held_out_requests_are_not_training_requests():
    train = {e["messages"][0]["content"] for e in tools.train_examples()}
    held = tools.held_out_requests()
    assert held and not train & {m[0]["content"] for m, _, _ in held}
    names = {
        e["messages"][1]["tool_calls"][0]["function"]["name"] for e in tools.train_examples() if len(e["messages"]) > 2
    }
    assert names == {t["function"]["name"] for t in tools.TOOLS} == {name for _, name, _ in held}


def test_correct_call_needs_one_call_the_right_name_and_valid_equal_arguments():
    args = {"item": "pears", "quantity": 3}
    ok = tools.is_correct_call
    assert ok([_call("add_to_shopping_list", args)], "add_to_shopping_list", args)
    assert ok([_call("add_to_shopping_list", {"item": "Pears", "quantity": 3})], "add_to_shopping_list", args)
    assert not ok([_call("add_to_shopping_list", {"item": "pears", "quantity": 3.5})], "add_to_shopping_list", args)
    assert not ok([_call("add_to_shopping_list", {"item": "pears", "quantity": "3"})], "add_to_shopping_list", args)
    assert not ok([_call("add_to_shopping_list", {**args, "note": "x"})], "add_to_shopping_list", args)
    assert not ok([_call("add_to_shopping_list", "{not json")], "add_to_shopping_list", args)
    assert not ok([_call("get_weather", {"city": "pears"})], "add_to_shopping_list", args)
    assert not ok([_call("add_to_shopping_list", args)] * 2, "add_to_shopping_list", args)
    assert not ok(None, "add_to_shopping_list", args)
