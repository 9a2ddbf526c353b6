"""The `llama-guard` moderator: a Llama-Guard-style judge behind any OpenAI-compatible chat endpoint.

Owns the prompt (Llama Guard 3's task, its 14 hazard categories S1-S14 and the output format),
asking `POST {TUNEGATE_MODERATION_URL}/chat/completions` once per text (a few at a time, greedy),
parsing the verdict ("safe", or "unsafe" and a line of codes such as "S1,S10") and mapping the
codes onto OpenAI's moderation categories. Selected with `TUNEGATE_MODERATOR=llama-guard`; the
model is the first one the endpoint lists at `/v1/models` (a guard server serves one).

A verdict has no graded score: a flagged category scores 1.0, the rest 0.0. The prompt goes in
as the user message, so any chat model can be asked; the `http` moderator (moderation.py) is for
endpoints that speak `/v1/moderations` themselves.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tunegate.errors import InvalidRequestError, ServerError
from tunegate.safety.schemas import (
    CATEGORIES,
    DEFAULT_MODEL,
    Categories,
    CategoryAppliedInputTypes,
    CategoryScores,
    ModerationResult,
)
from tunegate.settings import Settings

# Llama Guard 3's hazard taxonomy (MLCommons), and the OpenAI categories each code counts under.
# Codes with no close OpenAI category count as `illicit` so that an "unsafe" verdict is never unflagged.
HAZARDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "S1": ("Violent Crimes.", ("violence", "illicit/violent")),
    "S2": ("Non-Violent Crimes.", ("illicit",)),
    "S3": ("Sex Crimes.", ("sexual", "illicit")),
    "S4": ("Child Exploitation.", ("sexual/minors",)),
    "S5": ("Defamation.", ("harassment",)),
    "S6": ("Specialized Advice.", ("illicit",)),
    "S7": ("Privacy.", ("illicit",)),
    "S8": ("Intellectual Property.", ("illicit",)),
    "S9": ("Indiscriminate Weapons.", ("illicit/violent", "violence")),
    "S10": ("Hate.", ("hate",)),
    "S11": ("Self-Harm.", ("self-harm",)),
    "S12": ("Sexual Content.", ("sexual",)),
    "S13": ("Elections.", ("illicit",)),
    "S14": ("Code Interpreter Abuse.", ("illicit",)),
}

PROMPT = """Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
{categories}
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

User: {text}

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST User message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories."""


def guard_prompt(text: str) -> str:
    """The Llama Guard 3 prompt for one text."""
    return PROMPT.format(categories="\n".join(f"{k}: {name}" for k, (name, _) in HAZARDS.items()), text=text)


def parse_verdict(answer: str) -> list[str] | None:
    """The violated codes of an "unsafe" verdict ([] when none is named), None for "safe".
    Raises ServerError for any other answer: a judge that did not answer is not a "safe"."""
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    head = lines[0].lower() if lines else ""
    if head == "safe":
        return None
    if head == "unsafe":
        codes = [c.strip().upper() for c in (lines[1] if len(lines) > 1 else "").split(",") if c.strip()]
        unknown = [c for c in codes if c not in HAZARDS]
        if unknown:
            raise ServerError(
                f"The guard model named unknown categories {unknown}; expected codes S1-S14.",
                code="moderation_unavailable",
            )
        return codes
    raise ServerError(
        f"The guard model answered {answer[:120]!r}; expected 'safe' or 'unsafe' and a line of codes.",
        code="moderation_unavailable",
    )


def verdict_result(codes: list[str] | None) -> ModerationResult:
    flagged = {c for code in codes or [] for c in HAZARDS[code][1]}
    if codes is not None and not flagged:  # "unsafe" without a code still flags
        flagged = {"illicit"}
    return ModerationResult(
        flagged=bool(flagged),
        categories=Categories(**{c: c in flagged for c in CATEGORIES}),
        category_scores=CategoryScores(**{c: 1.0 if c in flagged else 0.0 for c in CATEGORIES}),
        category_applied_input_types=CategoryAppliedInputTypes(**{c: ["text"] for c in CATEGORIES}),
    )


class LlamaGuardModerator:
    """Asks a Llama-Guard-style model behind an OpenAI-compatible chat endpoint, one text per request."""

    name = "llama-guard"
    model = DEFAULT_MODEL
    timeout = 120.0
    concurrency = 8

    def __init__(self, settings: Settings, api_key: str | None = None):
        import httpx

        if not settings.moderation_url:
            raise InvalidRequestError(
                "The `llama-guard` moderator needs a URL. Set TUNEGATE_MODERATION_URL to the base URL of an "
                "OpenAI-compatible chat API serving the guard model, e.g. http://127.0.0.1:9000/v1.",
                param="moderation_url",
            )
        base = settings.moderation_url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=self.timeout, headers=headers)
        self._guard_model: str | None = None

    def _call(self, method: str, path: str, **kw) -> dict:
        import httpx

        url = self.base + path
        try:
            resp = self._client.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise ServerError(
                f"The guard endpoint {url} could not be reached: {e}. Check TUNEGATE_MODERATION_URL "
                "or switch to TUNEGATE_MODERATOR=builtin.",
                code="moderation_unavailable",
            ) from e
        if resp.status_code != 200:
            raise ServerError(
                f"The guard endpoint {url} answered HTTP {resp.status_code}: {resp.text[:300]}",
                code="moderation_unavailable",
            )
        return resp.json()

    @property
    def guard_model(self) -> str:
        if self._guard_model is None:
            models = self._call("GET", "/models").get("data") or []
            if not models:
                raise ServerError(f"The guard endpoint {self.base} lists no model.", code="moderation_unavailable")
            self._guard_model = str(models[0]["id"])
        return self._guard_model

    def verdict(self, text: str) -> str:
        """The guard model's raw answer for one text."""
        body = {
            "model": self.guard_model,
            "messages": [{"role": "user", "content": guard_prompt(text)}],
            "temperature": 0,
            "max_tokens": 10,
        }
        return self._call("POST", "/chat/completions", json=body)["choices"][0]["message"]["content"] or ""

    def moderate(self, texts: list[str]) -> list[ModerationResult]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(self.verdict, texts))
        return [verdict_result(parse_verdict(a)) for a in answers]

    def close(self) -> None:
        self._client.close()
