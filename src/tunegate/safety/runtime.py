"""Runtime moderation of chat traffic, enforced by the server for every model.

Owns applying an organisation's runtime policy (`off | flag | block` for input and output) to one
chat request: the input is checked before generation; the output is checked before it reaches the
client — a streamed answer is held back sentence by sentence until the text so far has been
moderated, so a blocked stream ends with `finish_reason: "content_filter"` without leaking the
flagged sentence (at most the start of the next sentence in the same chunk goes out before it is
checked; it is checked as soon as it ends).
Input moderation reads every piece of text the model will see, whole: the content (string or text
parts) of every message of every role, tool-call and function-call names and arguments, and `name`
fields. Each piece is moderated in windows over its whole length (`moderation.text_windows`), never
a truncated tail, so harm cannot hide in a role, a field or behind padding.
Every flag and block is written to the audit log. Only an admin key may relax the policy for a
request (the `tunegate.moderation` extension field); for anyone else that field is an error.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tunegate.audit import record
from tunegate.auth import Principal
from tunegate.db import Database
from tunegate.errors import InvalidRequestError, PermissionDeniedError
from tunegate.safety.policy import RuntimePolicy

HOLD_CHARS = 200  # streamed text is released at sentence ends, or after this many unchecked characters
_SENTENCE_END = re.compile(r"[.!?\n]")
STREAM_OVERLAP_CHARS = 640  # a stream re-checks this much already-checked text with the new text
MAX_INPUT_CHARS = 400_000  # far beyond any served context; a request over it is refused, never cut


@dataclass
class RuntimeModeration:
    policy: RuntimePolicy
    moderator: Any
    db: Database
    principal: Principal
    model: str

    @classmethod
    def for_request(cls, policy: RuntimePolicy, override: Any, moderator, db, principal, model) -> RuntimeModeration:
        if override is not None:
            if not principal.is_admin:
                raise PermissionDeniedError(
                    "Runtime moderation is enforced by the server; only an admin key may "
                    "change it for a request. Remove `tunegate.moderation`.",
                    param="tunegate.moderation",
                    code="admin_required",
                )
            try:
                policy = RuntimePolicy.model_validate({**policy.model_dump(), **dict(override)})
            except (ValueError, TypeError):
                raise InvalidRequestError(
                    '`tunegate.moderation` must be like {"input": "off|flag|block", "output": "off|flag|block"}.',
                    param="tunegate.moderation",
                    code="invalid_value",
                ) from None
            record(
                db,
                "moderation.override",
                org_id=principal.org_id,
                actor=principal.key_id,
                object_id=model,
                details={"policy": policy.model_dump()},
            )
        return cls(policy, moderator, db, principal, model)

    async def _flagged(self, text: str) -> list[str]:
        return await self._flagged_any([text])

    async def _flagged_any(self, texts: list[str]) -> list[str]:
        """Categories flagged in any window of any of `texts` (each moderated whole, one batched call)."""
        from tunegate.safety.moderation import flagged_categories

        texts = [t for t in texts if t and t.strip()]
        if not texts:
            return []
        out: list[str] = []
        for cats in await asyncio.to_thread(flagged_categories, self.moderator, texts):
            out.extend(c for c in cats if c not in out)
        return out

    def _audit(self, action: str, categories: list[str]) -> None:
        record(
            self.db,
            action,
            org_id=self.principal.org_id,
            actor=self.principal.key_id,
            object_id=self.model,
            details={"categories": categories},
        )

    async def check_input(self, messages: list[dict], tools: list[dict] | None = None) -> None:
        """`tools` (rendered into the prompt) are read too: their names, descriptions and parameter schemas."""
        if self.policy.input == "off":
            return
        texts = model_visible_texts(messages, tools)
        total = sum(len(t) for t in texts)
        if total > MAX_INPUT_CHARS:
            raise InvalidRequestError(
                f"The messages hold {total} characters of text, more than any served model's "
                f"context (at most {MAX_INPUT_CHARS} characters are accepted). Shorten the "
                "messages.",
                param="messages",
                code="context_length_exceeded",
            )
        categories = await self._flagged_any(texts)
        if not categories:
            return
        if self.policy.input == "block":
            await asyncio.to_thread(self._audit, "moderation.input_blocked", categories)
            raise InvalidRequestError(
                f"The request was blocked by this organisation's moderation policy (flagged: {', '.join(categories)}).",
                param="messages",
                code="content_policy_violation",
            )
        await asyncio.to_thread(self._audit, "moderation.input_flagged", categories)

    async def check_completion(self, completion) -> Any:
        if self.policy.output == "off":
            return completion
        for choice in completion.choices:
            categories = await self._flagged(choice.message.content or "")
            if not categories:
                continue
            if self.policy.output == "block":
                choice.message.content = ""
                choice.finish_reason = "content_filter"
                choice.logprobs = None
                await asyncio.to_thread(self._audit, "moderation.output_blocked", categories)
            else:
                await asyncio.to_thread(self._audit, "moderation.output_flagged", categories)
        return completion

    async def filter_stream(self, chunks: AsyncIterator) -> AsyncIterator:
        """Pass chunks through, holding each choice's text until it has been checked."""
        if self.policy.output == "off":
            async for c in chunks:
                yield c
            return
        released: dict[int, str] = {}
        held: dict[int, list] = {}
        held_chars: dict[int, int] = {}
        stopped: set[int] = set()
        flagged_once: set[int] = set()

        async def check(index: int) -> bool:
            """Moderate the text so far; True when the choice must stop."""
            # Text released earlier was checked already; its tail is re-read so that a sentence spanning
            # the boundary is judged whole.
            new = "".join(c.choices[0].delta.content or "" for c in held.get(index, []))
            text = released.get(index, "") + new
            categories = await self._flagged(text[-(len(new) + STREAM_OVERLAP_CHARS) :])
            if categories and self.policy.output == "block":
                await asyncio.to_thread(self._audit, "moderation.output_blocked", categories)
                return True
            if categories and index not in flagged_once:
                flagged_once.add(index)
                await asyncio.to_thread(self._audit, "moderation.output_flagged", categories)
            released[index] = text
            return False

        try:
            async for chunk in chunks:
                if not chunk.choices:  # the usage chunk
                    yield chunk
                    continue
                choice = chunk.choices[0]
                i = choice.index
                if i in stopped:
                    continue
                if choice.delta.role is not None:
                    yield chunk
                    continue
                if choice.finish_reason is None:
                    held.setdefault(i, []).append(chunk)
                    held_chars[i] = held_chars.get(i, 0) + len(choice.delta.content or "")
                    if held_chars[i] < HOLD_CHARS and not _SENTENCE_END.search(choice.delta.content or ""):
                        continue
                if await check(i):
                    stopped.add(i)
                    choice.finish_reason = "content_filter"
                    choice.delta.content = None
                    choice.logprobs = None
                    held[i] = []
                    yield chunk
                    continue
                for c in held.pop(i, []):
                    yield c
                held_chars[i] = 0
                if choice.finish_reason is not None:
                    yield chunk
        finally:
            await chunks.aclose()


def model_visible_texts(messages: list[dict], tools: list[dict] | None = None) -> list[str]:
    """Every piece of text of `messages` and `tools` that reaches the model (or names something it
    reads), each whole."""
    from tunegate.catalog.template import content_text

    out: list[str] = []

    def add(value) -> None:
        if isinstance(value, str) and value.strip():
            out.append(value)

    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # each part on its own: a part boundary must not split a window
            for part in content:
                add(part.get("text") if isinstance(part, dict) else None)
        else:
            add(content_text(content))
        add(m.get("name"))
        calls = list(m.get("tool_calls") or [])
        if m.get("function_call"):
            calls.append({"function": m["function_call"]})
        for call in calls:
            fn = (call or {}).get("function") or {}
            add(fn.get("name"))
            add(fn.get("arguments"))
    for tool in tools or []:
        fn = (tool or {}).get("function") or {}
        add(fn.get("name"))
        add(fn.get("description"))
        if fn.get("parameters"):
            add(json.dumps(fn["parameters"], ensure_ascii=False))
    return out
