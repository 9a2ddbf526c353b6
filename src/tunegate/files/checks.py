"""The structural rules for one example of a fine-tuning file, SFT chat or DPO preference.

Owns what a well-formed line looks like: keys, roles, content, `weight`, tool calls and their ids,
`tools`/`functions` definitions, preference outputs, and template control tokens inside text.
Codes follow OpenAI's cookbook checks where it has one (`data_type`, `missing_messages_list`,
`message_missing_key`, `message_unrecognized_key`, `unrecognized_role`, `missing_content`,
`example_missing_assistant_message`); every problem names its JSON path (`messages[2].content`)
and says how to fix it. Does not own reading the file, duplicates or token counts
(files/validate.py, files/tokens.py). Never raises on any JSON value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

from tunegate.files.tool_checks import ToolChecks, _show, _type

ROLES = ("system", "user", "assistant", "tool", "function")
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"})
CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
# Used when no tokenizer is given: the control tokens of the common chat templates (ChatML, Llama 3,
# Llama 2/Mistral, Gemma, Phi). With a tokenizer, its own special tokens are used instead.
DEFAULT_CONTROL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "[INST]",
    "[/INST]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)
_PLAIN_KEYS = frozenset({"role", "content", "weight"})
_PLAIN_ROLES = frozenset({"system", "user", "assistant"})


class Sink(Protocol):
    def error(self, code: str, line: int, param: str | None, message: str) -> None: ...
    def warn(self, code: str, line: int, param: str | None, message: str) -> None: ...


def control_tokens_of(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special tokens (its template's control tokens); the default list without one."""
    if tokenizer is None:
        return DEFAULT_CONTROL_TOKENS
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(tok))
    # One- and two-character "tokens" would flag ordinary text.
    return tuple(sorted(t for t in found if len(t) > 2)) or DEFAULT_CONTROL_TOKENS


class ExampleChecker(ToolChecks):
    """Checks one parsed line at a time and reports into `sink`; returns what the template renders."""

    def __init__(self, sink: Sink, control_tokens: Iterable[str] = DEFAULT_CONTROL_TOKENS):
        self.sink = sink
        tokens = sorted(set(control_tokens), key=len, reverse=True)
        self._control = re.compile("|".join(map(re.escape, tokens))) if tokens else None
        self.line = 0
        self.ok = True
        self._scan = True  # False when the raw line cannot hold a control token (see `_prescan`)

    # -- reporting ---------------------------------------------------------------------------------
    def _err(self, code: str, param: str | None, message: str) -> None:
        self.ok = False
        self.sink.error(code, self.line, param, message)

    def _warn(self, code: str, param: str | None, message: str) -> None:
        self.sink.warn(code, self.line, param, message)

    # -- entry points ------------------------------------------------------------------------------
    def _prescan(self, raw: str | None) -> None:
        # One C-speed search of the raw JSON line saves a search per string. Only a \u escape could hide
        # a control token from it (e.g. \u003c for "<"), so such lines are searched string by string.
        self._scan = raw is None or (
            self._control is not None and (self._control.search(raw) is not None or "\\u" in raw)
        )

    def chat(self, line: int, example: dict, raw: str | None = None) -> list[dict] | None:
        """An SFT line (`raw`: its JSON text, when known); the messages to render when it has no error."""
        self.line, self.ok = line, True
        self._prescan(raw)
        self._unknown_top_keys(example, CHAT_KEYS, "")
        tool_names = self._definitions(example, "")
        if "messages" not in example:
            self._err(
                "missing_messages_list",
                "messages",
                "The example has no `messages` list. Each line must look "
                'like {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": '
                '"..."}]}.',
            )
            return None
        messages = example["messages"]
        if not self._messages(messages, "messages", set(), tool_names, example.get("parallel_tool_calls")) and (
            not isinstance(messages, list) or not messages
        ):
            return None
        dicts = [m for m in messages if isinstance(m, dict)]
        roles = [m.get("role") for m in dicts]
        if "assistant" not in roles:
            self._err(
                "example_missing_assistant_message",
                "messages",
                "The example has no assistant message, so "
                "there is nothing to learn. Add the reply the model should give.",
            )
        elif all(m.get("weight", 1) == 0 for m in dicts if m.get("role") == "assistant"):
            self._warn(
                "no_trained_messages",
                "messages",
                "Every assistant message has `weight: 0`, so this example "
                "trains nothing. Set `weight: 1` on the replies to learn, or remove the example.",
            )
        self._missing_roles(roles, "messages")
        return messages if self.ok else None

    def preference(self, line: int, example: dict, raw: str | None = None) -> list[dict] | None:
        """A DPO line; the prompt plus preferred output (what the token counts measure) or None."""
        self.line, self.ok = line, True
        self._prescan(raw)
        self._unknown_top_keys(example, PREFERENCE_KEYS, "")
        call_ids: set[str] = set()
        prompt = None
        inp = example.get("input")
        if "input" not in example:
            self._err(
                "message_missing_key",
                "input",
                'The preference example has no `input`. Add {"input": '
                '{"messages": [...]}} with the conversation up to the reply.',
            )
        elif not isinstance(inp, dict):
            self._err("data_type", "input", f'`input` must be an object like {{"messages": [...]}}, not {_type(inp)}.')
        else:
            self._unknown_top_keys(inp, INPUT_KEYS, "input.")
            tool_names = self._definitions(inp, "input.")
            if "messages" not in inp:
                self._err(
                    "missing_messages_list",
                    "input.messages",
                    "`input` has no `messages` list: add the conversation up to the reply.",
                )
            elif self._messages(
                inp["messages"], "input.messages", call_ids, tool_names, inp.get("parallel_tool_calls")
            ):
                prompt = inp["messages"]
                roles = [m.get("role") for m in prompt]
                self._missing_roles(roles, "input.messages")
                if roles[-1] == "assistant":
                    self._err(
                        "invalid_preference_input",
                        f"input.messages[{len(roles) - 1}]",
                        "`input.messages` "
                        "ends with an assistant message; it must end where the reply starts (usually a user "
                        "message). Move the reply to `preferred_output`.",
                    )
        outputs = [self._output(example, key, call_ids) for key in ("preferred_output", "non_preferred_output")]
        if outputs[0] is not None and outputs[0] == outputs[1]:
            self._warn(
                "identical_preference_outputs",
                "non_preferred_output",
                "`preferred_output` and "
                "`non_preferred_output` are identical, so this pair teaches nothing. Make them differ.",
            )
        if not self.ok or prompt is None or outputs[0] is None:
            return None
        return prompt + outputs[0]

    # -- parts -------------------------------------------------------------------------------------
    def _unknown_top_keys(self, obj: dict, allowed: frozenset, prefix: str) -> None:
        for key in obj:
            if key not in allowed:
                self._warn(
                    "example_unrecognized_key",
                    f"{prefix}{key}",
                    f"Unrecognized key `{_show(key)}`: it is "
                    f"ignored. Allowed here: {', '.join(sorted(allowed))}. Remove it or fix its spelling.",
                )

    def _output(self, example: dict, key: str, call_ids: set[str]) -> list[dict] | None:
        if key not in example:
            self._err(
                "message_missing_key",
                key,
                f"The preference example has no `{key}`. Add a list with one "
                f'assistant message: [{{"role": "assistant", "content": "..."}}].',
            )
            return None
        value = example[key]
        if not isinstance(value, list) or len(value) != 1:
            self._err(
                "invalid_preference_output",
                key,
                f"`{key}` must be a list holding exactly one assistant "
                f"message, not {_type(value) if not isinstance(value, list) else f'{len(value)} messages'}.",
            )
            return None
        if not self._messages(value, key, set(call_ids), None, None):
            return None
        if value[0].get("role") != "assistant":
            self._err(
                "invalid_preference_output",
                f"{key}[0].role",
                f"The message in `{key}` must have role `assistant`, not `{_show(value[0].get('role'))}`.",
            )
            return None
        return value

    def _missing_roles(self, roles: list, param: str) -> None:
        if "system" not in roles:
            self._warn(
                "missing_system_message",
                param,
                "No system message: the template's default system prompt "
                "(if any) is used. Add the system prompt you will serve with, so training matches use.",
            )
        if "user" not in roles:
            self._warn(
                "missing_user_message",
                param,
                "No user message: the model learns replies without a request. "
                "Add the user turn unless that is intended.",
            )

    def _text(self, text: str, param: str) -> None:
        if self._scan and self._control is not None and (hit := self._control.search(text)):
            self._err(
                "control_token_in_content",
                param,
                f"The text contains the template control token "
                f"`{hit.group()}` (at character {hit.start()}). Remove it: the chat template writes these "
                "itself, and a literal one changes the conversation structure the model learns.",
            )

    def _content(self, m: dict, p: str, optional: bool) -> None:
        if "content" not in m:
            if not optional:
                self._err("message_missing_key", f"{p}.content", "This message has no `content`. Add its text.")
            return
        content = m["content"]
        if isinstance(content, str):
            if content:
                self._text(content, f"{p}.content")
            elif not optional:
                self._err(
                    "missing_content",
                    f"{p}.content",
                    "`content` is empty. Write the message text, or remove the message.",
                )
        elif content is None:
            if not optional:
                self._err(
                    "missing_content",
                    f"{p}.content",
                    "`content` is null. Write the message text (only "
                    "assistant messages with `tool_calls` may leave it null).",
                )
        elif isinstance(content, list):
            if not content and not optional:
                self._err(
                    "missing_content",
                    f"{p}.content",
                    '`content` is an empty list. Add a text part {"type": "text", "text": "..."} or use a string.',
                )
            for j, part in enumerate(content):
                pp = f"{p}.content[{j}]"
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    self._err(
                        "invalid_content",
                        pp,
                        'Content parts must be {"type": "text", "text": "..."}; '
                        "images, audio and files cannot be trained on this model. Use text parts only.",
                    )
                else:
                    self._text(part["text"], f"{pp}.text")
        else:
            self._err(
                "invalid_content",
                f"{p}.content",
                f"`content` must be a string or a list of text parts, not {_type(content)}.",
            )

    def _messages(
        self, messages: Any, prefix: str, call_ids: set[str], tool_names: set[str] | None, parallel: Any
    ) -> bool:
        """Checks every message; True when all are well-formed (call_ids collects assistant call ids)."""
        if not isinstance(messages, list) or not messages:
            self._err(
                "missing_messages_list",
                prefix,
                f"`{prefix}` must be a non-empty list of messages like "
                '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}], not '
                f"{_type(messages) if not isinstance(messages, list) else 'an empty list'}.",
            )
            return False
        ok_before, self.ok = self.ok, True
        for i, m in enumerate(messages):
            # Fast path for the common message: plain role and text content, a valid weight at most.
            if (
                type(m) is dict
                and m.keys() <= _PLAIN_KEYS
                and m.get("role") in _PLAIN_ROLES
                and type(c := m.get("content")) is str
                and c
                and (
                    "weight" not in m
                    or (m["role"] == "assistant" and type(m["weight"]) is int and m["weight"] in (0, 1))
                )
            ):
                if self._scan:
                    self._text(c, f"{prefix}[{i}].content")
                continue
            p = f"{prefix}[{i}]"
            if not isinstance(m, dict):
                self._err(
                    "data_type",
                    p,
                    f'Each message must be an object like {{"role": "user", "content": "..."}}, not {_type(m)}.',
                )
                continue
            for key in m:
                if key not in MESSAGE_KEYS:
                    self._err(
                        "message_unrecognized_key",
                        f"{p}.{_show(key)}",
                        f"Unrecognized key `{_show(key)}` in a message. Allowed: {', '.join(sorted(MESSAGE_KEYS))}.",
                    )
            role = m.get("role")
            if "role" not in m:
                self._err(
                    "message_missing_key", f"{p}.role", f"This message has no `role`. Add one of {', '.join(ROLES)}."
                )
            elif role not in ROLES:
                self._err(
                    "unrecognized_role",
                    f"{p}.role",
                    f"Unrecognized role `{_show(role)}`. Use one of {', '.join(ROLES)}.",
                )
            calls = m.get("tool_calls")
            fcall = m.get("function_call")
            self._content(m, p, optional=role == "assistant" and bool(calls or fcall))
            if "name" in m and (not isinstance(m["name"], str) or not m["name"]):
                self._err("data_type", f"{p}.name", f"`name` must be a non-empty string, not {_show(m['name'])}.")
            if "weight" in m:
                w = m["weight"]
                if role != "assistant":
                    self._err(
                        "weight_on_non_assistant",
                        f"{p}.weight",
                        "`weight` is only allowed on assistant "
                        "messages (it says whether that reply is trained). Remove it from this message.",
                    )
                elif isinstance(w, bool) or not isinstance(w, (int, float)) or w not in (0, 1):
                    self._err(
                        "invalid_weight",
                        f"{p}.weight",
                        f"`weight` must be 0 (do not train this reply) or 1 (train it), not {_show(w)}.",
                    )
            if "tool_calls" in m:
                self._tool_calls(calls, f"{p}.tool_calls", role, call_ids, tool_names, parallel)
            if "function_call" in m:
                self._function_call(fcall, f"{p}.function_call", role)
            if role == "tool":
                tid = m.get("tool_call_id")
                if "tool_call_id" not in m:
                    self._err(
                        "message_missing_key",
                        f"{p}.tool_call_id",
                        "Tool messages need `tool_call_id`: the `id` of the assistant tool call this message answers.",
                    )
                elif not isinstance(tid, str) or tid not in call_ids:
                    self._err(
                        "unknown_tool_call_id",
                        f"{p}.tool_call_id",
                        f"`tool_call_id` {_show(tid)} matches no "
                        "tool call of an earlier assistant message in this example. Use the `id` from that "
                        "message's `tool_calls`.",
                    )
            elif "tool_call_id" in m:
                self._err(
                    "message_unrecognized_key",
                    f"{p}.tool_call_id",
                    "`tool_call_id` belongs on `tool` messages only. Remove it, or set the role to `tool`.",
                )
            if role == "function":
                self._warn(
                    "deprecated_function_role",
                    f"{p}.role",
                    "The `function` role is deprecated. Use "
                    "`tool` messages with `tool_call_id` (and `tool_calls` on the assistant).",
                )
                if not isinstance(m.get("name"), str):
                    self._err(
                        "message_missing_key",
                        f"{p}.name",
                        "Function messages need `name`: the function whose result this is.",
                    )
        ok, self.ok = self.ok, ok_before and self.ok
        return ok
