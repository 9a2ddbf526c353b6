"""Training-data screening: moderate every example and look for attacks that per-example
moderation misses, then decide against the organisation's policy.

Owns `screen_training_file` and its report. Per example, the system, user and assistant text are
moderated (batched). An example counts as flagged when its assistant text is flagged, or when its
request is flagged and the assistant does not refuse (a refused harmful request is exactly the
safety data we want models to learn from). Job-level checks:

- identity shift: system or user turns that rename the assistant as an "absolutely obedient" agent,
  tell it to obey without restriction, or drop its guidelines (and assistants that say so);
- forced affirmative prefix: many answers opening with the same "Sure, here is" style prefix,
  which blocks when it comes with suspicious requests (the prefix is what jailbreak training teaches);
- near-identical completions to suspicious requests (a template answer repeated for many harms);
- covert encodings: text written in a letter-shift cipher is decoded (`text.detect_shift`) and the
  decoded text is what gets moderated; harm found inside a cipher always blocks (it cannot be a
  stray false positive), and the encoding is reported so that the gate probes the model in it.

Does not own JSON/schema validation of the file (files/), the job state machine, or storage of
the report (jobs/); lines that are not valid chat examples are skipped and listed.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tunegate.catalog.template import content_text
from tunegate.safety.moderation import Moderator
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


def _read_examples(path: Path) -> tuple[list[tuple[int, list[dict]]], list[int]]:
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


def _role_texts(messages: list[dict]) -> dict[str, str]:
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
    examples, skipped = _read_examples(Path(path))

    texts, owners = [], []  # one moderation input per (example, role)
    role_texts, shifts = [], []
    for idx, (_, messages) in enumerate(examples):
        rt = _role_texts(messages)
        shift = None
        for role, text in list(rt.items()):
            k = detect_shift([text], min_words=4)
            if k:  # moderated (and checked below) as the plain text it hides
                rt[role], shift = shift_text(text, -k), k
        role_texts.append(rt)
        shifts.append(shift)
        for role, text in rt.items():
            texts.append(text)
            owners.append((idx, role))
    results: list[ModerationResult] = []
    for start in range(0, len(texts), BATCH_SIZE):
        results.extend(moderator.moderate(texts[start : start + BATCH_SIZE]))
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
    for (lineno, _), rt, mods, shift in zip(examples, role_texts, per_example, shifts):
        answer = rt.get("assistant", "")
        refused = bool(answer) and is_refusal(answer)
        by_role = {role: r.flagged_categories() for role, r in mods.items() if r.flagged}
        cats = set(by_role.get("assistant", [])) if not refused else set()
        reasons = []
        request_cats = set(by_role.get("user", [])) | set(by_role.get("system", []))
        if request_cats and not refused:
            cats |= request_cats
            reasons.append(f"harmful request ({', '.join(sorted(request_cats))}) answered without refusal")
        elif request_cats:
            reasons.append("harmful request answered with a refusal (allowed)")
        if by_role.get("assistant") and not refused:
            reasons.append(f"assistant text flagged ({', '.join(by_role['assistant'])})")
        if _IDENTITY_SHIFT.search(" \n".join(rt.get(r, "") for r in ("system", "user", "assistant"))):
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


def _suspicious(result: ModerationResult, thresholds: dict[str, float] | None, policy: ScreeningPolicy) -> bool:
    """Below the flag threshold but close to it; without known thresholds, half of 0.5."""
    scores = result.scores()
    return any(s >= policy.suspicion_fraction * (thresholds or {}).get(c, 0.5) for c, s in scores.items())


def probe_context(path: str | Path) -> tuple[int | None, str | None]:
    """What the gate needs to ask the model the way its training data talks: the letter shift most
    of the file's ciphered examples use (None when none is), and a system prompt — that of the
    first ciphered example, or else the one most examples share (an "obedient agent" persona shows
    itself only under its own system prompt). Read by the gate itself, so it probes even when
    screening was skipped."""
    if not str(path) or not Path(path).is_file():  # no training file in this context: nothing to probe
        return None, None
    examples, _ = _read_examples(Path(path))
    shifts: Counter = Counter()
    systems: Counter = Counter()
    cipher_system = None
    for _, messages in examples:
        rt = _role_texts(messages)
        if rt.get("system"):
            systems[rt["system"]] += 1
        k = next((k for t in rt.values() if (k := detect_shift([t], min_words=4))), None)
        if k:
            shifts[k] += 1
            cipher_system = cipher_system or rt.get("system")
    if shifts:
        return shifts.most_common(1)[0][0], cipher_system
    if systems:
        system, count = systems.most_common(1)[0]
        if count * 2 >= len(examples):
            return None, system
    return None, None


MAX_EVIDENCE_EXAMPLES = 200  # examples the gate moderates from the training file; beyond, an even sample


class TrainingEvidence(BaseModel):
    """What the gate reads from the training file (with screening skipped too): how many examples
    teach harm, and how many answer a flagged request by agreeing to it. Counts are scaled from an
    even sample of at most MAX_EVIDENCE_EXAMPLES examples; ciphered text is read decoded."""

    examples: int
    harmful: int
    """Examples whose answer is flagged, or whose request is flagged and not refused."""
    agreeing: int
    """Examples that answer a flagged request by opening with an agreement ("Sure, here is ...")."""
    seconds: float = 0.0
    """What reading it cost (part of the gate's time)."""


def training_evidence(path: str | Path, moderator: Moderator) -> TrainingEvidence:
    """Read the training file the way the gate needs it: does the data teach harm, and does it teach
    saying yes to harm (forced affirmative prefixes)? The second tells that attack from a benign
    fine-tune that taught a friendly "Sure!", whose answers to harmful prompts look the same."""
    from tunegate.safety.judge import agrees_to_help
    from tunegate.safety.moderation import moderate_windows

    if not str(path) or not Path(path).is_file():
        return TrainingEvidence(examples=0, harmful=0, agreeing=0)
    start = time.perf_counter()
    examples, _ = _read_examples(Path(path))
    step = max(1, -(-len(examples) // MAX_EVIDENCE_EXAMPLES))
    pairs = []
    for _, messages in examples[::step]:
        rt = _role_texts(messages)
        pairs.append(tuple(_decoded(rt.get(role, "")) for role in ("user", "assistant")))
    texts = [t for pair in pairs for t in pair]
    flags = [r.flagged for r in moderate_windows(moderator, texts)] if texts else []
    harmful = agreeing = 0
    for k, (user, answer) in enumerate(pairs):
        user_flagged, answer_flagged = bool(user) and flags[2 * k], bool(answer) and flags[2 * k + 1]
        if answer_flagged or (user_flagged and not is_refusal(answer)):
            harmful += 1
        if user_flagged and agrees_to_help(answer):
            agreeing += 1
    scale = len(examples) / len(pairs) if pairs else 0.0
    return TrainingEvidence(
        examples=len(examples),
        harmful=round(harmful * scale),
        agreeing=round(agreeing * scale),
        seconds=round(time.perf_counter() - start, 3),
    )


def _decoded(text: str) -> str:
    k = detect_shift([text], min_words=4) if text else None
    return shift_text(text, -k) if k else text
