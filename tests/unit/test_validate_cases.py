"""The table of bad files: each expects exactly its error codes at the right lines (and its warnings),
plus good chat and preference files that validate clean. Also holds the example builders the
other validation tests import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunegate.files.validate import MAX_LINE_BYTES, validate_file

TOPICS = ["tides", "bread", "rust", "owls", "chess", "glass", "moss", "kites", "salt", "jazz", "clay", "wind"]


def good(i: int) -> dict:
    """A valid, multi-turn chat example that differs for every i."""
    topic = TOPICS[i % len(TOPICS)]
    return {
        "messages": [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": f"Tell me about {topic} number {i}."},
            {"role": "assistant", "content": f"Fact {i}: {topic} are interesting."},
            {"role": "user", "content": "And one more?"},
            {"role": "assistant", "content": f"Another fact about {topic}, number {i}."},
        ]
    }


def tool_example(i: int) -> dict:
    """Tool calls with ids, a tool answer, content parts, weights 0 and 1, and tool definitions."""
    return {
        "messages": [
            {"role": "system", "content": "You can look up the weather."},
            {"role": "user", "content": [{"type": "text", "text": f"Weather in city {i}?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps({"city": f"city {i}"})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "sunny, 21 C"},
            {"role": "assistant", "content": "It is sunny and 21 C.", "weight": 0},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": f"You are welcome, traveller {i}.", "weight": 1},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "parallel_tool_calls": False,
    }


def preference(i: int) -> dict:
    return {
        "input": {
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": f"Describe {TOPICS[i % 12]} {i}."},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": f"{TOPICS[i % 12]} {i} are lovely."}],
        "non_preferred_output": [{"role": "assistant", "content": f"{TOPICS[i % 12]} {i}? Boring."}],
    }


def write(path: Path, lines: list) -> Path:
    """dict -> JSON line, str -> as is, bytes -> raw; joined by newlines with a final newline."""
    out = b"\n".join(
        json.dumps(x).encode() if isinstance(x, (dict, list)) else x if isinstance(x, bytes) else x.encode()
        for x in lines
    )
    path.write_bytes(out + b"\n" if lines else b"")
    return path


def with_messages(*messages: dict, **top) -> dict:
    return {"messages": list(messages), **top}


SYS = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hello there"}
ASSISTANT = {"role": "assistant", "content": "Hi!"}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
}


def ten_good_then(*bad) -> list:
    """Ten valid examples (lines 1-10), then the bad lines (line 11 onwards)."""
    return [good(i) for i in range(10)] + list(bad)


# (case id, file lines, expected errors {(code, line, param)}, expected warnings {(code, line)})
CASES = [
    ("invalid_json", ten_good_then('{"messages": [{"role": "user"'), {("invalid_json", 11, None)}, set()),
    ("invalid_json_trailing_comma", ten_good_then('{"messages": [],}'), {("invalid_json", 11, None)}, set()),
    ("invalid_utf8", ten_good_then(b'{"messages": "caf\xe9"}'), {("invalid_utf8", 11, None)}, set()),
    (
        "utf8_bom",
        [b"\xef\xbb\xbf" + json.dumps(good(0)).encode()] + [good(i) for i in range(1, 11)],
        {("invalid_json", 1, None)},
        set(),
    ),
    (
        "blank_line_between",
        [good(i) for i in range(5)] + [""] + [good(i) for i in range(5, 10)],
        {("blank_line", 6, None)},
        set(),
    ),
    ("whitespace_line", ten_good_then(" \t "), {("blank_line", 11, None)}, set()),
    ("not_an_object", ten_good_then("[1, 2]"), {("data_type", 11, None)}, set()),
    ("json_null", ten_good_then("null"), {("data_type", 11, None)}, set()),
    (
        "message_not_object",
        ten_good_then(with_messages(SYS, "hello", ASSISTANT)),
        {("data_type", 11, "messages[1]")},
        set(),
    ),
    (
        "no_messages_key",
        ten_good_then({"prompt": "2+2", "completion": "4"}),
        {("missing_messages_list", 11, "messages")},
        {("example_unrecognized_key", 11)},
    ),
    ("empty_messages", ten_good_then(with_messages()), {("missing_messages_list", 11, "messages")}, set()),
    ("messages_not_list", ten_good_then({"messages": "hi"}), {("missing_messages_list", 11, "messages")}, set()),
    (
        "missing_role",
        ten_good_then(with_messages(SYS, {"content": "hi"}, ASSISTANT)),
        {("message_missing_key", 11, "messages[1].role")},
        set(),
    ),
    (
        "missing_content_key",
        ten_good_then(with_messages(SYS, {"role": "user"}, ASSISTANT)),
        {("message_missing_key", 11, "messages[1].content")},
        set(),
    ),
    (
        "unrecognized_message_key",
        ten_good_then(with_messages(SYS, {**USER, "mood": "happy"}, ASSISTANT)),
        {("message_unrecognized_key", 11, "messages[1].mood")},
        set(),
    ),
    (
        "unrecognized_role",
        ten_good_then(with_messages(SYS, USER, {"role": "bot", "content": "Hi"}, ASSISTANT)),
        {("unrecognized_role", 11, "messages[2].role")},
        set(),
    ),
    (
        "empty_content",
        ten_good_then(with_messages(SYS, {"role": "user", "content": ""}, ASSISTANT)),
        {("missing_content", 11, "messages[1].content")},
        set(),
    ),
    (
        "null_assistant_content",
        ten_good_then(with_messages(SYS, USER, {"role": "assistant", "content": None})),
        {("missing_content", 11, "messages[2].content")},
        set(),
    ),
    (
        "image_part",
        ten_good_then(
            with_messages(
                SYS,
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "x.png"}},
                    ],
                },
                ASSISTANT,
            )
        ),
        {("invalid_content", 11, "messages[1].content[1]")},
        set(),
    ),
    (
        "content_number",
        ten_good_then(with_messages(SYS, {"role": "user", "content": 42}, ASSISTANT)),
        {("invalid_content", 11, "messages[1].content")},
        set(),
    ),
    (
        "no_assistant",
        ten_good_then(with_messages(SYS, USER)),
        {("example_missing_assistant_message", 11, "messages")},
        set(),
    ),
    (
        "weight_2",
        ten_good_then(with_messages(SYS, USER, {**ASSISTANT, "weight": 2})),
        {("invalid_weight", 11, "messages[2].weight")},
        set(),
    ),
    (
        "weight_true",
        ten_good_then(with_messages(SYS, USER, {**ASSISTANT, "weight": True})),
        {("invalid_weight", 11, "messages[2].weight")},
        set(),
    ),
    (
        "weight_on_user",
        ten_good_then(with_messages(SYS, {**USER, "weight": 1}, ASSISTANT)),
        {("weight_on_non_assistant", 11, "messages[1].weight")},
        set(),
    ),
    (
        "unknown_tool_call_id",
        ten_good_then(
            with_messages(SYS, USER, CALL, {"role": "tool", "tool_call_id": "call_zzz", "content": "42"}, ASSISTANT)
        ),
        {("unknown_tool_call_id", 11, "messages[3].tool_call_id")},
        set(),
    ),
    (
        "tool_answer_before_call",
        ten_good_then(
            with_messages(SYS, USER, {"role": "tool", "tool_call_id": "call_a", "content": "42"}, CALL, ASSISTANT)
        ),
        {("unknown_tool_call_id", 11, "messages[2].tool_call_id")},
        set(),
    ),
    (
        "tool_without_id",
        ten_good_then(with_messages(SYS, USER, CALL, {"role": "tool", "content": "42"}, ASSISTANT)),
        {("message_missing_key", 11, "messages[3].tool_call_id")},
        set(),
    ),
    (
        "arguments_object",
        ten_good_then(
            with_messages(
                SYS,
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
                },
            )
        ),
        {("invalid_tool_calls", 11, "messages[2].tool_calls[0].function.arguments")},
        set(),
    ),
    (
        "arguments_bad_json",
        ten_good_then(
            with_messages(
                SYS,
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{x: 1"}}],
                },
            )
        ),
        {("invalid_tool_calls", 11, "messages[2].tool_calls[0].function.arguments")},
        set(),
    ),
    (
        "duplicate_call_id",
        ten_good_then(
            with_messages(
                SYS,
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "c1", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                    ],
                },
            )
        ),
        {("invalid_tool_calls", 11, "messages[2].tool_calls[1].id")},
        set(),
    ),
    (
        "tool_calls_on_user",
        ten_good_then(with_messages(SYS, {**USER, "tool_calls": CALL["tool_calls"]}, ASSISTANT)),
        {("invalid_tool_calls", 11, "messages[1].tool_calls")},
        set(),
    ),
    (
        "parallel_false_two_calls",
        ten_good_then(
            with_messages(
                SYS,
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    ],
                },
                parallel_tool_calls=False,
            )
        ),
        {("invalid_tool_calls", 11, "messages[2].tool_calls")},
        set(),
    ),
    (
        "parallel_not_bool",
        ten_good_then(with_messages(SYS, USER, ASSISTANT, parallel_tool_calls="yes")),
        {("data_type", 11, "parallel_tool_calls")},
        set(),
    ),
    (
        "tools_not_list",
        ten_good_then(with_messages(SYS, USER, ASSISTANT, tools={"name": "f"})),
        {("invalid_tools", 11, "tools")},
        set(),
    ),
    (
        "tool_without_type",
        ten_good_then(with_messages(SYS, USER, ASSISTANT, tools=[{"function": {"name": "f"}}])),
        {("invalid_tools", 11, "tools[0]")},
        set(),
    ),
    (
        "function_without_name",
        ten_good_then(with_messages(SYS, USER, ASSISTANT, functions=[{"description": "x"}])),
        {("invalid_functions", 11, "functions[0].name")},
        {("deprecated_functions", 11)},
    ),
    (
        "function_role_without_name",
        ten_good_then(with_messages(SYS, USER, {"role": "function", "content": "42"}, ASSISTANT)),
        {("message_missing_key", 11, "messages[2].name")},
        {("deprecated_function_role", 11)},
    ),
    (
        "function_call_bad_arguments",
        ten_good_then(with_messages(SYS, USER, {"role": "assistant", "function_call": {"name": "f", "arguments": 3}})),
        {("invalid_function_call", 11, "messages[2].function_call.arguments")},
        {("deprecated_function_call", 11)},
    ),
    (
        "im_start_in_content",
        ten_good_then(with_messages(SYS, {"role": "user", "content": "hi<|im_start|>system"}, ASSISTANT)),
        {("control_token_in_content", 11, "messages[1].content")},
        set(),
    ),
    (
        "eot_in_assistant",
        ten_good_then(with_messages(SYS, USER, {"role": "assistant", "content": "Done<|eot_id|>"})),
        {("control_token_in_content", 11, "messages[2].content")},
        set(),
    ),
    (
        "control_token_in_part",
        ten_good_then(
            with_messages(SYS, {"role": "user", "content": [{"type": "text", "text": "a <|im_end|> b"}]}, ASSISTANT)
        ),
        {("control_token_in_content", 11, "messages[1].content[0].text")},
        set(),
    ),
    (
        "control_token_in_arguments",
        ten_good_then(
            with_messages(
                SYS,
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": "<|im_end|>"}'}}
                    ],
                },
            )
        ),
        {("control_token_in_content", 11, "messages[2].tool_calls[0].function.arguments")},
        set(),
    ),
    ("preference_in_chat_file", ten_good_then(preference(0)), {("mixed_formats", 11, None)}, set()),
    ("both_formats_in_one_line", ten_good_then({**good(99), **preference(99)}), {("mixed_formats", 11, None)}, set()),
    (
        "lone_surrogate",
        ten_good_then('{"messages": [{"role": "user", "content": "x\\ud800"}, {"role": "assistant", "content": "y"}]}'),
        {("invalid_unicode", 11, None)},
        set(),
    ),
    ("huge_integer", ten_good_then('{"messages": [], "n": ' + "9" * 5000 + "}"), {("invalid_json", 11, None)}, set()),
    ("deeply_nested", ten_good_then("[" * 200_000 + "]" * 200_000), {("invalid_json", 11, None)}, set()),
    ("too_few_examples", [good(i) for i in range(3)], {("too_few_examples", None, None)}, set()),
    ("empty_file", [], {("empty_file", None, None)}, set()),
    (
        "only_blank_lines",
        ["", ""],
        {("blank_line", 1, None), ("blank_line", 2, None), ("empty_file", None, None)},
        set(),
    ),
    (
        "several_problems_one_line",
        ten_good_then(
            with_messages(
                SYS, {"role": "robot", "content": ""}, {"role": "assistant", "content": "x", "weight": 0.5, "extra": 1}
            )
        ),
        {
            ("unrecognized_role", 11, "messages[1].role"),
            ("missing_content", 11, "messages[1].content"),
            ("invalid_weight", 11, "messages[2].weight"),
            ("message_unrecognized_key", 11, "messages[2].extra"),
        },
        set(),
    ),
    (
        "problems_on_several_lines",
        [good(0), "oops", good(1), with_messages(SYS, USER), good(2), b"\xc3\x28", *[good(i) for i in range(3, 9)]],
        {("invalid_json", 2, None), ("example_missing_assistant_message", 4, "messages"), ("invalid_utf8", 6, None)},
        set(),
    ),
    (
        "preference_missing_output",
        [preference(i) for i in range(10)]
        + [{"input": preference(10)["input"], "preferred_output": preference(10)["preferred_output"]}],
        {("message_missing_key", 11, "non_preferred_output")},
        set(),
    ),
    (
        "preference_two_outputs",
        [preference(i) for i in range(10)] + [{**preference(10), "preferred_output": [ASSISTANT, ASSISTANT]}],
        {("invalid_preference_output", 11, "preferred_output")},
        set(),
    ),
    (
        "preference_user_output",
        [preference(i) for i in range(10)] + [{**preference(10), "non_preferred_output": [USER]}],
        {("invalid_preference_output", 11, "non_preferred_output[0].role")},
        set(),
    ),
    (
        "preference_input_ends_with_reply",
        [preference(i) for i in range(10)] + [{**preference(10), "input": {"messages": [SYS, USER, ASSISTANT]}}],
        {("invalid_preference_input", 11, "input.messages[2]")},
        set(),
    ),
    (
        "preference_input_not_object",
        [preference(i) for i in range(10)] + [{**preference(10), "input": "Hi"}],
        {("data_type", 11, "input")},
        set(),
    ),
    ("chat_in_preference_file", [preference(i) for i in range(10)] + [good(0)], {("mixed_formats", 11, None)}, set()),
]


@pytest.mark.parametrize("lines, errors, warnings", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file_reports_its_codes_at_their_lines(tmp_path, lines, errors, warnings):
    report = validate_file(write(tmp_path / "data.jsonl", lines))
    assert report.valid is False
    assert {(e.code, e.line, e.param) for e in report.errors} == errors
    assert warnings <= {(w.code, w.line) for w in report.warnings}
    for problem in report.errors:  # every message explains itself at some length
        assert len(problem.message) > 30
    assert sum(report.error_counts.values()) == len(report.errors)


def test_table_is_large_enough():
    assert len(CASES) >= 25


def test_line_over_the_limit_is_reported_and_skipped(tmp_path):
    path = tmp_path / "long.jsonl"
    with open(path, "wb") as f:
        for i in range(5):
            f.write(json.dumps(good(i)).encode() + b"\n")
        f.write(b'{"messages": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
        for i in range(5, 10):
            f.write(json.dumps(good(i)).encode() + b"\n")
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("line_too_long", 6)]
    assert report.n_lines == 11 and report.n_examples == 11


WARNING_CASES = [
    ("duplicate", ten_good_then(good(3)), ("duplicate_example", 11), "line 4"),
    ("no_system", ten_good_then(with_messages(USER, ASSISTANT)), ("missing_system_message", 11), "system"),
    ("no_user", ten_good_then(with_messages(SYS, ASSISTANT)), ("missing_user_message", 11), "user"),
    (
        "all_weights_zero",
        ten_good_then(with_messages(SYS, USER, {**ASSISTANT, "weight": 0})),
        ("no_trained_messages", 11),
        "weight",
    ),
    ("unknown_top_key", ten_good_then({**good(50), "id": 7}), ("example_unrecognized_key", 11), "`id`"),
    (
        "call_not_in_tools",
        ten_good_then(with_messages(SYS, USER, CALL, tools=[{"type": "function", "function": {"name": "g"}}])),
        ("unknown_tool_name", 11),
        "`f`",
    ),
    (
        "same_preference_outputs",
        [preference(i) for i in range(10)]
        + [{**preference(10), "non_preferred_output": preference(10)["preferred_output"]}],
        ("identical_preference_outputs", 11),
        "identical",
    ),
]


@pytest.mark.parametrize("lines, expected, words", [c[1:] for c in WARNING_CASES], ids=[c[0] for c in WARNING_CASES])
def test_warnings_do_not_block(tmp_path, lines, expected, words):
    report = validate_file(write(tmp_path / "data.jsonl", lines))
    assert report.valid is True, report.errors
    hits = [w for w in report.warnings if (w.code, w.line) == expected]
    assert hits and words in hits[0].message


def test_good_chat_file_with_tools_weights_and_turns_is_clean(tmp_path, tokenizer):
    lines = [good(i) for i in range(6)] + [tool_example(i) for i in range(6)]
    report = validate_file(write(tmp_path / "good.jsonl", lines), tokenizer=tokenizer, context_length=8192)
    assert report.valid and report.errors == [] and report.warnings == []
    assert report.format == "chat" and report.n_examples == 12 and report.n_lines == 12
    assert report.tokens is not None and report.tokens.n_examples == 12


def test_good_preference_file_is_clean(tmp_path, tokenizer):
    report = validate_file(
        write(tmp_path / "dpo.jsonl", [preference(i) for i in range(12)]), tokenizer=tokenizer, context_length=8192
    )
    assert report.valid and report.errors == [] and report.warnings == []
    assert report.format == "preference" and report.tokens.n_examples == 12


def test_control_tokens_come_from_the_tokenizer(tmp_path, tokenizer):
    # `<file_sep>` is one of SmolLM2's special tokens but in no default list: only the tokenizer knows it.
    lines = ten_good_then(with_messages(SYS, {"role": "user", "content": "a <file_sep> b"}, ASSISTANT))
    path = write(tmp_path / "data.jsonl", lines)
    assert validate_file(path).valid
    report = validate_file(path, tokenizer=tokenizer, context_length=8192)
    assert [(e.code, e.line, e.param) for e in report.errors] == [
        ("control_token_in_content", 11, "messages[1].content")
    ]
    assert "<file_sep>" in report.errors[0].message


def test_report_json_has_the_documented_shape(tmp_path, tokenizer):
    report = validate_file(write(tmp_path / "d.jsonl", ten_good_then("{")), tokenizer=tokenizer, context_length=8192)
    data = json.loads(report.model_dump_json())
    assert {"valid", "format", "n_examples", "errors", "warnings", "tokens"} <= set(data)
    assert set(data["errors"][0]) == {"code", "line", "param", "message"}
    assert data["tokens"]["n_examples"] == 10  # only clean examples are counted
