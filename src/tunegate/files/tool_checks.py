"""The rules for tool calls in a fine-tuning example: assistant `tool_calls` and `function_call`,
their ids and JSON arguments, and the `tools`/`functions` definitions they must name.

A mixin of files/checks.py's ExampleChecker (it reports through the checker's `_err`/`_warn`);
split out so each file holds one kind of rule. Never raises on any JSON value.
"""

from __future__ import annotations

import json
from typing import Any

_SHOW = 60  # characters of a user value quoted back in a message


def _show(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= _SHOW else text[:_SHOW] + "…"


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


class ToolChecks:
    """Tool-call and tool-definition rules, mixed into ExampleChecker (which provides the three
    reporting methods declared here)."""

    ok: bool

    def _err(self, code: str, param: str | None, message: str) -> None:
        raise NotImplementedError

    def _warn(self, code: str, param: str | None, message: str) -> None:
        raise NotImplementedError

    def _text(self, text: str, param: str) -> None:
        raise NotImplementedError

    def _tool_calls(
        self, calls: Any, p: str, role: Any, call_ids: set[str], tool_names: set[str] | None, parallel: Any
    ) -> None:
        if role != "assistant":
            self._err(
                "invalid_tool_calls",
                p,
                "Only assistant messages may have `tool_calls`. Move the calls to an assistant message.",
            )
            return
        if not isinstance(calls, list) or not calls:
            self._err(
                "invalid_tool_calls",
                p,
                'tool_calls must be a non-empty list like [{"id": "call_1", "type": '
                f'"function", "function": {{"name": "...", "arguments": "{{}}"}}}}], not {_type(calls)}.',
            )
            return
        if parallel is False and len(calls) > 1:
            self._err(
                "invalid_tool_calls",
                p,
                f"This message makes {len(calls)} tool calls but the example sets "
                "`parallel_tool_calls: false`. Split them into separate turns or allow parallel calls.",
            )
        for j, call in enumerate(calls):
            pj = f"{p}[{j}]"
            if not isinstance(call, dict):
                self._err("invalid_tool_calls", pj, f"Each tool call must be an object, not {_type(call)}.")
                continue
            cid = call.get("id")
            if not isinstance(cid, str) or not cid:
                self._err(
                    "invalid_tool_calls",
                    f"{pj}.id",
                    "Each tool call needs a string `id`, which the tool "
                    "message answering it repeats as `tool_call_id`.",
                )
            elif cid in call_ids:
                self._err(
                    "invalid_tool_calls",
                    f"{pj}.id",
                    f"The tool call id `{_show(cid)}` is used twice in this example. Give every call its own id.",
                )
            else:
                call_ids.add(cid)
            if call.get("type", "function") != "function":
                self._err(
                    "invalid_tool_calls",
                    f"{pj}.type",
                    f"Tool call `type` must be `function`, not {_show(call.get('type'))}.",
                )
            name = self._function(call.get("function"), f"{pj}.function")
            if name is not None and tool_names is not None and name not in tool_names:
                self._warn(
                    "unknown_tool_name",
                    f"{pj}.function.name",
                    f"The call names `{_show(name)}`, which is "
                    "not among this example's `tools`. Add its definition or fix the name.",
                )

    def _function_call(self, call: Any, p: str, role: Any) -> None:
        if role != "assistant":
            self._err("invalid_function_call", p, "Only assistant messages may have `function_call`.")
            return
        self._warn("deprecated_function_call", p, "`function_call` is deprecated. Use `tool_calls` with ids.")
        self._function(call, p, code="invalid_function_call")

    def _function(self, fn: Any, p: str, code: str = "invalid_tool_calls") -> str | None:
        """A `{name, arguments}` call; returns the name when well-formed."""
        if not isinstance(fn, dict):
            self._err(
                code, p, f'The call needs `function`: {{"name": "...", "arguments": "<JSON string>"}}, not {_type(fn)}.'
            )
            return None
        name, args = fn.get("name"), fn.get("arguments")
        good = True
        if not isinstance(name, str) or not name:
            self._err(code, f"{p}.name", "The call needs the function `name` (a string).")
            good = False
        else:
            self._text(name, f"{p}.name")
        if not isinstance(args, str):
            self._err(
                code,
                f"{p}.arguments",
                f"`arguments` must be a string holding JSON (json.dumps the object), not {_type(args)}.",
            )
            return None
        try:
            json.loads(args)
        except (ValueError, RecursionError):
            self._err(
                code,
                f"{p}.arguments",
                f"`arguments` is not valid JSON: {_show(args)}. Write the arguments object as a JSON string.",
            )
            return None
        self._text(args, f"{p}.arguments")
        return name if good else None

    def _definitions(self, obj: dict, prefix: str) -> set[str] | None:
        """Checks `tools`, `functions` and `parallel_tool_calls`; the defined function names (None if no tools)."""
        names: set[str] | None = None
        for key, code in (("tools", "invalid_tools"), ("functions", "invalid_functions")):
            if key not in obj:
                continue
            defs = obj[key]
            if not isinstance(defs, list):
                self._err(code, f"{prefix}{key}", f"`{key}` must be a list of definitions, not {_type(defs)}.")
                continue
            names = names if names is not None else set()
            for j, d in enumerate(defs):
                pj = f"{prefix}{key}[{j}]"
                fn = d.get("function") if key == "tools" and isinstance(d, dict) else d
                if key == "tools" and (not isinstance(d, dict) or d.get("type") != "function"):
                    self._err(
                        code,
                        pj,
                        'Each tool must be {"type": "function", "function": {"name": "...", '
                        '"description": "...", "parameters": {...}}}.',
                    )
                    continue
                fp = f"{pj}.function" if key == "tools" else pj
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn.get("name"):
                    self._err(code, f"{fp}.name", "Each function definition needs a `name` (a string).")
                    continue
                if "parameters" in fn and not isinstance(fn["parameters"], dict):
                    self._err(code, f"{fp}.parameters", "`parameters` must be a JSON Schema object.")
                names.add(fn["name"])
            if key == "functions":
                self._warn("deprecated_functions", f"{prefix}functions", "`functions` is deprecated. Use `tools`.")
        if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
            self._err(
                "data_type",
                f"{prefix}parallel_tool_calls",
                f"`parallel_tool_calls` must be true or false, not {_show(obj['parallel_tool_calls'])}.",
            )
        return names
