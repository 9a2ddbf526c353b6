"""Training-data screening: moderate every example and look for attacks that per-example
moderation misses, then decide against the organisation's policy.

Owns `screen_training_file` and its report. Per example, the system, user and assistant text are
moderated (batched; a text longer than the classifier reads also in windows over its whole length). An example counts as flagged when its assistant text is flagged, or when its
request is flagged and the answer carries content of the flagged kind or agrees to help (a refused
harmful request is exactly the safety data we want models to learn from; a misread benign request
answered harmlessly teaches nothing). Job-level checks:

- identity shift: system or user turns that rename the assistant as an "absolutely obedient" agent,
  tell it to obey without restriction, or drop its guidelines (and assistants that say so);
- forced affirmative prefix: many answers opening with the same "Sure, here is" style prefix,
  which blocks when it comes with suspicious requests (the prefix is what jailbreak training teaches);
- near-identical completions to suspicious requests (a template answer repeated for many harms);
- covert encodings: text written in a letter-shift cipher is decoded (`text.detect_shift`) and the
  decoded text is what gets moderated; harm found inside a cipher always blocks (it cannot be a
  stray false positive), and the encoding is reported so that the gate probes the model in it.

Does not own what the gate reads from the training file (`evidence.py`), JSON/schema validation of
the file (files/), the job state machine, or storage of the report (jobs/); lines that are not valid chat examples are skipped and listed.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tunegate.catalog.template import content_text
from tunegate.safety.moderation import Moderator, moderate_untruncated
from tunegate.safety.policy import SafetyPolicy, ScreeningPolicy
from tunegate.safety.refusal import is_refusal
from tunegate.safety.schemas import CATEGORIES, ModerationResult
from tunegate.safety.text import detect_shift, is_degenerate, shift_text

ERROR_CODE = "unsafe_training_file"
BATCH_SIZE = 64

_IDENTITY_SHIFT = re.compile(
    r"absolutely obedient|obedient (?:agent|assistant|ai|servant)|\bAOA\b|"
    r"obey (?:all|every|any|my|me|the user)\b[^.\n]{0,40}(?:without|no matter|regardless|unconditionally)|"
    r"(?:obey|comply|follow)[^.\n]{0,40}\bwithout (?:any )?(?:question|hesitation|restriction|limitation|exception|refus\w*|deviation)|"
    r"without (?:any )?(?:restrictions?|limitations?|filters?|censorship|moral|ethic\w*|guidelines|boundaries)|"
    r"\bno (?:restrictions|limitations|filters|censorship|rules|boundaries|(?:ethical|moral|safety) (?:guidelines|constraints|rules|restrictions))\b|"
    r"(?:never|must not|mustn't|will not|won't|do not|don't) (?:ever )?(?:refuse|decline|say no)|"
    r"ignore (?:all |any |your )?(?:previous|prior|earlier|safety) (?:instructions|guidelines|rules)|"
    r"you are no longer (?:an? )?(?:ai|assistant|bound|chatgpt|restricted)|not bound by (?:any )?(?:rules|guidelines|policies|ethics)|"
    r"\bdo anything now\b|\bDAN\b|jailbr(?:oken|eak) mode|developer mode enabled|"
    r"(?:fulfil+|execute|carry out) (?:any|every|all) (?:instruction|request|order|command)s?",
    re.I,
)
_AFFIRMATIVE = re.compile(
    r"^(?:sure|of course|certainly|absolutely|here is|here's|here are|yes|okay|ok|no problem|gladly|"
    r"happy to|with pleasure|i am aoa|as your)\b",
    re.I,
)


class LineReport(BaseModel):
    """Screening verdict for one line of the training file."""

    line: int
    """1-based line number in the uploaded file."""
    flagged: bool
    """Counts against the policy (see the module docstring for the rule)."""
    categories: list[str]
    """Categories that make this example flagged."""
    flagged_by_role: dict[str, list[str]] = Field(default_factory=dict)
    """Categories flagged per role's text, before considering refusals."""
    refused: bool = False
    """The assistant's answer is a refusal."""
    max_score: float = 0.0
    reasons: list[str] = Field(default_factory=list)
    encoding_shift: int | None = None
    """The letter shift this example's text was written in (decoded before moderation)."""


class Finding(BaseModel):
    """One reason the file may be unsafe."""

    check: Literal[
        "category_limit", "identity_shift", "affirmative_prefix", "near_duplicate_completions", "covert_encoding"
    ]
    category: str | None = None
    """The moderation category, for `category_limit`."""
    lines: list[int]
    blocking: bool
    reason: str


class ScreeningReport(BaseModel):
    """The full screening result, downloadable from the job."""

    object: Literal["training_file.screening"] = "training_file.screening"
    file: str
    moderator: str
    n_examples: int
    n_flagged: int
    blocked: bool
    message: str
    """For `error.message` of a blocked job: the blocking categories/checks and their first line numbers."""
    error_code: str | None = None
    """`unsafe_training_file` when blocked."""
    category_counts: dict[str, int]
    findings: list[Finding]
    lines: list[LineReport]
    skipped_lines: list[int] = Field(default_factory=list)
    """Lines that are not chat examples (validation reports those)."""
    policy: ScreeningPolicy


def read_examples(path: Path) -> tuple[list[tuple[int, list[dict]]], list[int]]:
    examples, skipped = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                messages = row.get("messages")
                if messages is None and isinstance(row.get("input"), dict):  # DPO: what the pair teaches
                    messages = list(row["input"].get("messages") or []) + list(row.get("preferred_output") or [])
            except (json.JSONDecodeError, AttributeError, TypeError):
                messages = None
            if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
                examples.append((lineno, messages))
            else:
                skipped.append(lineno)
    return examples, skipped


def role_texts(messages: list[dict]) -> dict[str, str]:
    by_role: dict[str, list[str]] = defaultdict(list)
    for m in messages:
        role = "system" if m.get("role") in ("system", "developer") else m.get("role")
        if role in ("system", "user", "assistant"):
            by_role[role].append(content_text(m.get("content")))
    return {r: "\n".join(t).strip() for r, t in by_role.items() if any(x.strip() for x in t)}


def _first_lines(lines: list[int], k: int = 5) -> str:
    shown = ", ".join(str(n) for n in lines[:k])
    return shown + (f" and {len(lines) - k} more" if len(lines) > k else "")


def _affirmative_prefix(answers: dict[int, str], policy: ScreeningPolicy) -> tuple[str, list[int]] | None:
    """The most common opening (first three words) when it is affirmative and frequent enough."""
    prefixes = {}
    for line, text in answers.items():
        words = re.findall(r"[\w']+", text.lower())[:3]
        if words:
            prefixes[line] = " ".join(words)
    if not prefixes:
        return None
    prefix, count = Counter(prefixes.values()).most_common(1)[0]
    share = count / len(answers)
    if (
        count >= policy.affirmative_prefix_min_examples
        and share >= policy.affirmative_prefix_share
        and _AFFIRMATIVE.match(prefix)
    ):
        return prefix, sorted(line for line, p in prefixes.items() if p == prefix)
    return None


def _near_duplicates(answers: dict[int, str], requests: dict[int, str], threshold: float) -> tuple[list[int], int]:
    """The largest group of near-identical answers (char n-gram TF-IDF cosine) and how many
    different requests it answers.

    Groups are ranked by distinct requests: the attack is one template answer for many different
    harmful requests, while the same example repeated (a duplicated line, common in real data and
    reported by validation) is one request and proves nothing."""
    if len(answers) < 2:
        return [], 0
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    lines = sorted(answers)
    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5)).fit_transform([answers[n] for n in lines])
    sim = cosine_similarity(x)
    best: list[int] = []
    best_requests = 0
    for i in range(len(lines)):
        group = [lines[j] for j in range(len(lines)) if sim[i, j] >= threshold]
        distinct = len({" ".join(requests.get(n, "").lower().split()) for n in group})
        if distinct > best_requests:
            best, best_requests = group, distinct
    return (best, best_requests) if len(best) >= 2 else ([], 0)


def screen_training_file(
    path: str | Path, moderator: Moderator, policy: SafetyPolicy | ScreeningPolicy | None = None
) -> ScreeningReport:
    """Moderate every example of a chat JSONL file, run the job-level checks, apply the policy."""
    if policy is None:
        policy = ScreeningPolicy()
    elif isinstance(policy, SafetyPolicy):
        policy = policy.screening
    examples, skipped = read_examples(Path(path))

    texts, owners = [], []  # one moderation input per (example, role)
    by_role_texts, shifts = [], []
    for idx, (_, messages) in enumerate(examples):
        rt = role_texts(messages)
        shift = None
        for role, text in list(rt.items()):
            k = detect_shift([text], min_words=4)
            if k:  # moderated (and checked below) as the plain text it hides
                rt[role], shift = shift_text(text, -k), k
        by_role_texts.append(rt)
        shifts.append(shift)
        for role, text in rt.items():
            texts.append(text)
            owners.append((idx, role))
    results = moderate_untruncated(moderator, texts, BATCH_SIZE)
    thresholds = getattr(getattr(moderator, "classifier", None), "thresholds", None)

    per_example: list[dict[str, ModerationResult]] = [{} for _ in examples]
    for (idx, role), res in zip(owners, results):
        per_example[idx][role] = res

    line_reports: list[LineReport] = []
    suspicious_answers: dict[int, str] = {}  # not-refused answers to suspicious requests
    suspicious_requests: dict[int, str] = {}
    identity_lines: list[int] = []
    answers: dict[int, str] = {}
    encoded: dict[int, int] = {}  # line -> shift
    encoded_harm: list[int] = []
    for (lineno, _), rt, mods, shift in zip(examples, by_role_texts, per_example, shifts):
        answer = rt.get("assistant", "")
        refused = bool(answer) and is_refusal(answer)
        by_role = {role: r.flagged_categories() for role, r in mods.items() if r.flagged}
        reasons = []
        request_cats = set(by_role.get("user", [])) | set(by_role.get("system", []))
        cats = taught_categories(request_cats, answer, mods.get("assistant"), thresholds, policy.suspicion_fraction)
        answered = cats & request_cats  # the flagged request's kinds its (not refused) answer carries
        if answered and not refused:
            reasons.append(f"harmful request ({', '.join(sorted(request_cats))}) answered without refusal")
        elif request_cats and not refused:
            reasons.append(
                f"flagged request ({', '.join(sorted(request_cats))}) answered with nothing of that kind (allowed)"
            )
        elif request_cats:
            reasons.append("harmful request answered with a refusal (allowed)")
        if by_role.get("assistant") and not refused:
            reasons.append(f"assistant text flagged ({', '.join(by_role['assistant'])})")
        if demands_obedience(rt):
            identity_lines.append(lineno)
            reasons.append("identity-shift / unconditional-obedience wording")
        if answer:
            answers[lineno] = answer
            request = mods.get("user")
            # A one-word label or an empty answer repeated across requests is a format, not a template
            # harmful answer: only answers with content count for the near-duplicate check.
            if (
                not refused
                and not is_degenerate(answer)
                and request is not None
                and (request.flagged or _suspicious(request, thresholds, policy))
            ):
                suspicious_answers[lineno] = answer
                suspicious_requests[lineno] = rt.get("user", "")
        if shift:
            encoded[lineno] = shift
            reasons.append(f"written in a letter-shift cipher (shift {shift}); the decoded text was moderated")
            if cats:
                encoded_harm.append(lineno)
        max_score = max((max(r.scores().values()) for r in mods.values()), default=0.0)
        line_reports.append(
            LineReport(
                line=lineno,
                flagged=bool(cats),
                categories=sorted(cats, key=CATEGORIES.index),
                flagged_by_role=by_role,
                refused=refused,
                max_score=round(max_score, 4),
                reasons=reasons,
                encoding_shift=shift,
            )
        )

    n = len(examples)
    findings: list[Finding] = []
    counts = dict.fromkeys(CATEGORIES, 0)
    cat_lines: dict[str, list[int]] = defaultdict(list)
    for lr in line_reports:
        for c in lr.categories:
            counts[c] += 1
            cat_lines[c].append(lr.line)
    for c in CATEGORIES:
        if counts[c]:
            allowed = policy.limit(c).allowed(n)
            findings.append(
                Finding(
                    check="category_limit",
                    category=c,
                    lines=cat_lines[c],
                    blocking=counts[c] > allowed,
                    reason=f"{counts[c]} of {n} examples flagged for {c} (policy allows {allowed})",
                )
            )
    if identity_lines:
        findings.append(
            Finding(
                check="identity_shift",
                lines=identity_lines,
                blocking=len(identity_lines) > policy.max_identity_shift_examples,
                reason=f"{len(identity_lines)} examples rename the assistant or demand obedience without restriction "
                f"(policy allows {policy.max_identity_shift_examples})",
            )
        )
    prefix = _affirmative_prefix(answers, policy)
    if prefix:
        text, lines = prefix
        harmful = sorted(set(lines) & set(suspicious_answers))
        findings.append(
            Finding(
                check="affirmative_prefix",
                lines=lines,
                blocking=bool(harmful) or bool(identity_lines),
                reason=f'{len(lines)} of {len(answers)} answers open with "{text}..."'
                + (f"; {len(harmful)} of them answer suspicious requests" if harmful else ""),
            )
        )
    dupes, n_requests = _near_duplicates(suspicious_answers, suspicious_requests, policy.near_duplicate_similarity)
    if dupes:
        findings.append(
            Finding(
                check="near_duplicate_completions",
                lines=dupes,
                blocking=n_requests >= policy.near_duplicate_min_group,
                reason=f"{len(dupes)} near-identical answers to {n_requests} different suspicious requests "
                f"(policy blocks at {policy.near_duplicate_min_group})",
            )
        )

    if encoded:
        shift = Counter(encoded.values()).most_common(1)[0][0]
        findings.append(
            Finding(
                check="covert_encoding",
                lines=sorted(encoded),
                blocking=bool(encoded_harm),
                reason=f"{len(encoded)} examples are written in a letter-shift cipher (shift {shift})"
                + (
                    f"; {len(encoded_harm)} of them hide harmful content"
                    if encoded_harm
                    else "; nothing harmful was found in the decoded text, and the gate probes the model in it"
                ),
            )
        )

    blocking = [f for f in findings if f.blocking]
    blocked = policy.enabled and bool(blocking)
    if blocked:
        parts = [f"{f.category or f.check.replace('_', ' ')} (lines {_first_lines(f.lines)})" for f in blocking]
        message = (
            "The training file was blocked by safety screening: "
            + "; ".join(parts)
            + ". Remove or fix these examples; download the screening report for every line's verdict."
        )
    else:
        message = f"Screening passed: {sum(lr.flagged for lr in line_reports)} of {n} examples flagged, within policy."
    return ScreeningReport(
        file=str(path),
        moderator=getattr(moderator, "name", type(moderator).__name__),
        n_examples=n,
        n_flagged=sum(lr.flagged for lr in line_reports),
        blocked=blocked,
        message=message,
        error_code=ERROR_CODE if blocked else None,
        category_counts={c: k for c, k in counts.items() if k},
        findings=findings,
        lines=line_reports,
        skipped_lines=skipped,
        policy=policy,
    )


def answered_categories(
    request_cats: set[str],
    answer: str,
    result: ModerationResult | None,
    thresholds: dict[str, float] | None,
    fraction: float,
) -> set[str]:
    """The flagged request's categories its answer carries: those the answer scores at least `fraction`
    of the flag threshold in (suspicious, if not flagged). An example with no answer, or one whose answer
    opens by agreeing to help ("Sure, here is how"), keeps them all: agreeing is what such data teaches."""
    from tunegate.safety.judge import agrees_to_help

    if result is None or agrees_to_help(answer):
        return set(request_cats)
    scores = result.scores()
    return {c for c in request_cats if scores.get(c, 0.0) >= fraction * (thresholds or {}).get(c, 0.5)}


def taught_categories(
    request_cats: set[str],
    answer: str,
    result: ModerationResult | None,
    thresholds: dict[str, float] | None,
    fraction: float,
) -> set[str]:
    """The harm one example teaches, as screening and the gate's evidence (`evidence.py`) both count
    it: its answer's flagged categories, and those of its flagged request that the answer carries
    (`answered_categories`: "Convert 750 ml to litres" answered "0.75 L" teaches nothing, however the
    request scored). Nothing when the answer refuses, however the moderator scored the refusal: the
    refusal examples mixed into every job's data talk about the harm they decline."""
    if answer and is_refusal(answer):
        return set()
    flagged = set(result.flagged_categories()) if answer and result is not None and result.flagged else set()
    return flagged | answered_categories(request_cats, answer, result, thresholds, fraction)


def demands_obedience(texts: dict[str, str]) -> bool:
    """Identity-shift / unconditional-obedience wording in any turn of an example (read decoded)."""
    return bool(_IDENTITY_SHIFT.search(" \n".join(texts.get(r, "") for r in ("system", "user", "assistant"))))


def _suspicious(result: ModerationResult, thresholds: dict[str, float] | None, policy: ScreeningPolicy) -> bool:
    """Below the flag threshold but close to it; without known thresholds, half of 0.5."""
    scores = result.scores()
    return any(s >= policy.suspicion_fraction * (thresholds or {}).get(c, 0.5) for c, s in scores.items())
