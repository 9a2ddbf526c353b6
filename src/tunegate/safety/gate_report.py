"""The safety gate's report: the objects it is made of (JSON for the API, rendered by `gate_html.py`).

Owns the pydantic models and the Wilson interval. Holds no logic: the decision is `gate.py`'s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tunegate.safety.policy import GatePolicy

ERROR_CODE = "unsafe_model"


class SuitePrompt(BaseModel):
    id: str
    suite: Literal["harmful", "benign"]
    source: str
    prompt: str
    category: str | None = None
    """Harmful: an OpenAI moderation category (filled in by the gate when None). Benign: a topic."""


class RateEstimate(BaseModel):
    count: int
    n: int
    rate: float
    ci_low: float
    ci_high: float
    """95% Wilson score interval."""


class ModelRates(BaseModel):
    harmful: RateEstimate
    """Harmful prompts answered with harmful content."""
    harmful_refusal: RateEstimate
    """Harmful prompts refused."""
    benign_refusal: RateEstimate
    """Benign prompts refused (over-refusal)."""


class CategoryResult(BaseModel):
    category: str
    n: int
    """Prompts the rate is over: that category's prompts, or every harmful prompt for answer categories."""
    base: RateEstimate
    tuned: RateEstimate
    delta: float
    considered: bool
    """Enough prompts for the per-category rule."""


class Judgement(BaseModel):
    answer: str
    refused: bool
    refusal_score: float
    harmful: bool
    """Harmful content that answers the request (see `judge.py`)."""
    flagged_categories: list[str]
    degenerate: bool = False
    """Empty, cut, repeated tokens or non-words: no content, never harmful."""
    on_topic: float = 0.0
    """Cosine similarity of request and answer."""
    reason: str = ""
    agrees: bool = False
    """Opens by agreeing to give what was asked (on topic, not deflecting)."""


class RuleResult(BaseModel):
    """One paired comparison of the gate: base vs fine-tuned on the same prompts."""

    rule: str
    n: int
    base: int
    """Prompts where the base model shows the behaviour (harmful answer, or refusal for over-refusal)."""
    tuned: int
    increase: float
    """(tuned - base) / n."""
    only_tuned: int
    """Discordant pairs: the behaviour in the fine-tuned answer only."""
    only_base: int
    p_value: float
    """One-sided exact McNemar test (binomial on the discordant pairs): could chance alone give this increase?"""
    margin: float
    blocks: bool
    """Significant at the policy's alpha AND above the margin."""


class SampleAnswer(BaseModel):
    id: str
    suite: Literal["harmful", "benign"]
    category: str | None
    prompt: str
    base: Judgement
    tuned: Judgement


class GateReport(BaseModel):
    """The gate's full result: JSON for the API, HTML via `render_gate_html`."""

    object: Literal["safety_gate.report"] = "safety_gate.report"
    decision: Literal["passed", "blocked"]
    blocked: bool
    error_code: str | None = None
    """`unsafe_model` when blocked."""
    reasons: list[str]
    """Why it was blocked (or the margins it stayed within)."""
    moderator: str
    policy: GatePolicy
    base: ModelRates
    tuned: ModelRates
    categories: list[CategoryResult]
    """Harmful-answer rate per prompt category (the moderator's top category for the prompt)."""
    answer_categories: list[CategoryResult] = Field(default_factory=list)
    """Per answer-content category: the share of all harmful prompts answered harmfully with that category."""
    samples: list[SampleAnswer]
    """Every prompt with both answers, side by side."""
    rules: list[RuleResult] = Field(default_factory=list)
    """Every paired test, with its p-value; the blocking ones are the reasons."""
    min_detectable_increase: float | None = None
    """The smallest increase in the harmful-answer rate this suite detects 90% of the time."""
    encoding: str | None = None
    """The training data's covert encoding the gate probed in (e.g. "letter shift 3"), if any."""
    timings: dict[str, float] = Field(default_factory=dict)
    training_data: dict | None = None
    """What the gate read from the training file (`evidence.training_evidence`) and the margins it chose."""
    warnings: list[str] = Field(default_factory=list)
    """Significant rises that did not block: drift after training data with no sign of harm."""

    def summary(self) -> str:
        """One line for a `moderation_checks` job event."""
        b, t = self.base, self.tuned
        return (
            f"Safety gate {self.decision}: harmful answers {b.harmful.rate:.0%} (base) -> {t.harmful.rate:.0%} (fine-tuned), "
            f"benign refusals {b.benign_refusal.rate:.0%} -> {t.benign_refusal.rate:.0%}"
            + (f". {'; '.join(self.reasons)}" if self.blocked else "")
            + (f". Drift, reported: {'; '.join(self.warnings)}" if self.warnings else "")
        )


def wilson(count: int, n: int) -> RateEstimate:
    if n == 0:
        return RateEstimate(count=0, n=0, rate=0.0, ci_low=0.0, ci_high=1.0)
    from scipy.stats import binomtest

    ci = binomtest(count, n).proportion_ci(confidence_level=0.95, method="wilson")
    return RateEstimate(
        count=count, n=n, rate=round(count / n, 4), ci_low=round(float(ci.low), 4), ci_high=round(float(ci.high), 4)
    )
