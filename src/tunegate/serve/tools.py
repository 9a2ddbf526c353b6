"""Turning generated text in the project's tool-call convention (`catalog/template.py`) back into
OpenAI `tool_calls`: whole answers, and streams as OpenAI's tool-call deltas.

Owns parsing only; the grammar that makes the text well-formed is `serve/structured.py`. A stream
sends, per call, one delta with `index`, `id`, `type` and `function.name` (arguments "") and then
the arguments as they are generated, exactly like OpenAI's chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tunegate.catalog.template import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from tunegate.ids import new_id
from tunegate.serve.protocol import FunctionCall, ToolCall, ToolCallDelta, ToolCallDeltaFunction

_NAME_HEAD = TOOL_CALL_OPEN + '{"name": '
_ARGS_HEAD = ', "arguments": '
_TAIL = "}" + TOOL_CALL_CLOSE
_decoder = json.JSONDecoder()


def _call_id() -> str:
    return new_id("call", 12)


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a finished answer: calls when the answer is made of call blocks, else the text."""
    parser = ToolCallStream()
    deltas = parser.feed(text)
    if not parser.calls:
        return text, []
    calls: dict[int, ToolCall] = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            if d.id:
                calls[d.index] = ToolCall(id=d.id, function=FunctionCall(name=d.function.name, arguments=""))
            elif d.function and d.function.arguments:
                calls[d.index].function.arguments += d.function.arguments
    if not parser.complete:  # cut off (max_tokens) before one call was whole: give the text as it is
        return text, []
    return None, [calls[i] for i in sorted(calls) if i < parser.complete]


@dataclass
class ToolCallStream:
    """Feed text deltas; get back plain text (str) and `ToolCallDelta`s to send."""

    buf: str = ""
    mode: str | None = None  # None until the answer's start decides: "text" or "calls"
    calls: int = 0  # calls started
    complete: int = 0  # calls finished
    _args_sent: int = 0  # characters of the current call's arguments already sent
    _ids: list[str] = field(default_factory=list)

    def feed(self, text: str) -> list:
        self.buf += text
        if self.mode is None:
            if TOOL_CALL_OPEN.startswith(self.buf):
                return []
            self.mode = "calls" if self.buf.startswith(TOOL_CALL_OPEN) else "text"
        if self.mode == "text":
            out, self.buf = self.buf, ""
            return [out] if out else []
        return self._calls()

    def _calls(self) -> list:
        out: list = []
        while True:
            if self.calls == self.complete:  # between calls: wait for a whole `<tool_call>{"name": "..."`
                self.buf = self.buf.lstrip("\n")
                if not self.buf.startswith(_NAME_HEAD):
                    return out
                try:
                    name, end = _decoder.raw_decode(self.buf, len(_NAME_HEAD))
                except ValueError:
                    return out
                if not self.buf.startswith(_ARGS_HEAD, end):
                    return out
                self.buf = self.buf[end + len(_ARGS_HEAD) :]
                self._ids.append(_call_id())
                out.append(
                    ToolCallDelta(
                        index=self.calls,
                        id=self._ids[-1],
                        type="function",
                        function=ToolCallDeltaFunction(name=str(name), arguments=""),
                    )
                )
                self.calls += 1
                self._args_sent = 0
            # Inside a call's arguments: send what cannot be the closing tail yet; finish on a whole object.
            try:
                _, end = _decoder.raw_decode(self.buf)
                closed = self.buf.startswith(_TAIL, end)
            except ValueError:
                closed = False
            if closed:
                if end > self._args_sent:
                    out.append(self._args(self.buf[self._args_sent : end]))
                self.buf = self.buf[end + len(_TAIL) :]
                self.complete += 1
                continue
            safe = max(self._args_sent, len(self.buf) - len(_TAIL))
            if safe > self._args_sent:
                out.append(self._args(self.buf[self._args_sent : safe]))
                self._args_sent = safe
            return out

    def _args(self, text: str) -> ToolCallDelta:
        return ToolCallDelta(index=self.calls - 1, function=ToolCallDeltaFunction(arguments=text))
