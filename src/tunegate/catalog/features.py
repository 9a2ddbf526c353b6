"""What a base model's chat template supports, found by rendering probe conversations with it.

Owns `TemplateFeatures` (system role, tool role, tool definitions, generation prompt, the
end-of-turn token, how the template edits message contents) and the conversions tunegate applies
where a template lacks something. Does not render training examples (template.py does, using
these features) nor decide which models exist (registry.py).

Families differ in exactly these points (Llama 3, Qwen 2.5/3, Mistral, Gemma 2/3, Phi 3/4):

- System role: Gemma 2's template raises on a system message, older Mistral templates too.
  tunegate's documented conversion for such a template: the system message is folded into the
  first user turn as `system + "\\n\\n" + user` (what Gemma 3's own template does). The fold is
  part of the template hash (`effective_template_sha256`), so an adapter trained with it is never
  served by a template without it.
- Tool role: templates that reject a `tool` message make that line a validation error with its
  own code (`unsupported_role`) naming the fix; nothing is converted silently.
- End of turn: the token the template writes right after an assistant's content (`<|eot_id|>`,
  `<|im_end|>`, `<end_of_turn>`, `<|end|>`, `</s>`) is trained with the content and stops
  generation; it is often not the tokenizer's `eos_token` (Gemma, Phi 3).
- Content edits: Llama 3 and Gemma templates `trim` contents. The strongest whitespace edit under
  which the template renders a probe identically is applied to trained contents before marking,
  so the loss spans are exactly what the model sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tunegate.errors import InvalidRequestError

# The documented conversion, hashed with the template when it applies (see effective_template_sha256).
SYSTEM_FOLD = "tunegate:system-folded-into-first-user-turn(system + '\\n\\n' + user)"
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "tg_probe_tool", "description": "probe", "parameters": {"type": "object", "properties": {}}},
}
# Whitespace edits a template may make to a content, strongest first; identity last.
_EDITS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("strip", str.strip),
    ("strip_newlines", lambda s: s.strip("\n")),
    ("lstrip", str.lstrip),
    ("rstrip", str.rstrip),
    ("lstrip_newlines", lambda s: s.lstrip("\n")),
    ("rstrip_newlines", lambda s: s.rstrip("\n")),
    ("none", lambda s: s),
)
CONTENT_EDITS = dict(_EDITS)


class UnsupportedRoleError(InvalidRequestError):
    """A message role the base model's chat template does not accept."""

    def __init__(self, message: str, *, param: str | None = "messages", code: str | None = "unsupported_role"):
        super().__init__(message, param=param, code=code)


@dataclass(frozen=True)
class TemplateFeatures:
    has_template: bool
    system_role: bool  # the template renders a system message itself
    fold_system: bool  # tunegate folds the system message into the first user turn (no system role)
    tool_role: bool  # `tool` messages render
    tools: bool  # tool definitions (`tools=`) render
    generation_prompt: bool  # add_generation_prompt changes the text
    eot_token: str | None  # written right after an assistant's content; trained and a stop token
    eot_token_id: int | None
    content_edit: str  # the whitespace edit the template makes to assistant contents (CONTENT_EDITS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CACHE: dict[tuple[int, str], TemplateFeatures] = {}


def template_features(tokenizer) -> TemplateFeatures:
    """Probe the tokenizer's chat template once (cached per tokenizer and template)."""
    key = (id(tokenizer), tokenizer.chat_template or "")
    if key not in _CACHE:
        _CACHE[key] = _probe(tokenizer)
    return _CACHE[key]


def effective_template_sha256(template: str, features: TemplateFeatures) -> str:
    """The template hash adapters are tied to: the template plus any conversion tunegate applies."""
    from tunegate.catalog.registry import template_sha256  # the template + the project's tool convention

    return template_sha256(template + ("\n" + SYSTEM_FOLD if features.fold_system else ""))


def _render(tokenizer, messages: list[dict], **kwargs) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception:  # a template may raise anything (raise_exception, undefined variables)
        return None


def _probe(tokenizer) -> TemplateFeatures:
    if not tokenizer.chat_template:
        return TemplateFeatures(False, False, False, False, False, False, None, None, "none")
    user = {"role": "user", "content": "tg probe question"}
    with_system = _render(
        tokenizer,
        [{"role": "system", "content": "tg probe system"}, user, {"role": "assistant", "content": "tg probe answer"}],
    )
    system_role = with_system is not None and "tg probe system" in with_system
    tool_turn = [
        user,
        {"role": "assistant", "content": "calling"},
        {"role": "tool", "content": "tg probe result"},
        {"role": "assistant", "content": "done"},
    ]
    tool_text = _render(tokenizer, tool_turn)
    tool_role = tool_text is not None and "tg probe result" in tool_text
    tools_text = _render(tokenizer, [user], tools=[_PROBE_TOOL], add_generation_prompt=True)
    tools = tools_text is not None and "tg_probe_tool" in tools_text
    plain = _render(tokenizer, [user])
    prompted = _render(tokenizer, [user], add_generation_prompt=True)
    generation_prompt = plain is not None and prompted is not None and prompted != plain
    eot = _eot_token(tokenizer, user)
    return TemplateFeatures(
        has_template=True,
        system_role=system_role,
        fold_system=not system_role,
        tool_role=tool_role,
        tools=tools,
        generation_prompt=generation_prompt,
        eot_token=eot,
        eot_token_id=tokenizer.convert_tokens_to_ids(eot) if eot else None,
        content_edit=_content_edit(tokenizer, user),
    )


def _eot_token(tokenizer, user: dict) -> str | None:
    """The special token the template writes right after an assistant's content."""
    text = _render(tokenizer, [user, {"role": "assistant", "content": "tgprobeanswer"}])
    if text is None or "tgprobeanswer" not in text:
        return None
    rest = text[text.rindex("tgprobeanswer") + len("tgprobeanswer") :]
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    matches = [t for t in specials if t and rest.startswith(t)]
    return max(matches, key=len) if matches else None


def _content_edit(tokenizer, user: dict) -> str:
    """The strongest whitespace edit under which the template renders an assistant content unchanged."""
    content = "\n \n tgprobe \n \n"

    def with_content(c: str) -> str | None:
        return _render(tokenizer, [user, {"role": "assistant", "content": c}])

    original = with_content(content)
    if original is None:
        return "none"
    for name, edit in _EDITS:
        if edit(content) == content or with_content(edit(content)) == original:
            return name
    return "none"


def adapt_messages(messages: list[dict], features: TemplateFeatures) -> list[dict]:
    """Plain `{"role", "content"}` messages -> what this template can render: the system message folded
    into the first user turn where there is no system role; a clear error for a rejected tool role."""
    if not features.has_template:
        return messages
    out = list(messages)
    if features.fold_system and out and out[0]["role"] == "system":
        system = out.pop(0)["content"]
        if out and out[0]["role"] == "user":
            out[0] = {**out[0], "content": system + "\n\n" + out[0]["content"]}
        else:
            out.insert(0, {"role": "user", "content": system})
        if any(m["role"] == "system" for m in out):
            raise UnsupportedRoleError(
                "This base model's chat template has no system role; tunegate folds one leading system message "
                "into the first user turn, but this conversation has another system message later. Merge it into "
                "the user message that follows it.",
                param="messages",
            )
    if not features.tool_role and any(m["role"] == "tool" for m in out):
        raise UnsupportedRoleError(
            "This base model's chat template does not accept `tool` messages. Remove the tool messages (or put "
            "their results in a user message), or fine-tune a base model whose template supports tools "
            "(see `tunegate models add`)."
        )
    return out
