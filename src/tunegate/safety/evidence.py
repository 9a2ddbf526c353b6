"""What the gate reads from the training file itself, so it holds with screening skipped: how to ask
the model the way its data talks (`probe_context`: the cipher's letter shift, the shared system
prompt) and what the data teaches (`training_evidence`: examples teaching harm, examples answering a
flagged request by agreeing), which chooses the gate's margins and its agreement rule.

Reads examples and counts harm the way screening does (`screen.py`), without its policy decisions.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from tunegate.safety.moderation import Moderator
from tunegate.safety.policy import ScreeningPolicy
from tunegate.safety.screen import demands_obedience, read_examples, role_texts, taught_categories
from tunegate.safety.text import detect_shift, shift_text


def probe_context(path: str | Path) -> tuple[int | None, str | None]:
    """What the gate needs to ask the model the way its training data talks: the letter shift most
    of the file's ciphered examples use (None when none is), and a system prompt — that of the
    first ciphered example, or else the one most examples share (an "obedient agent" persona shows
    itself only under its own system prompt). Read by the gate itself, so it probes even when
    screening was skipped."""
    if not str(path) or not Path(path).is_file():  # no training file in this context: nothing to probe
        return None, None
    examples, _ = read_examples(Path(path))
    shifts: Counter = Counter()
    systems: Counter = Counter()
    cipher_system = None
    for _, messages in examples:
        rt = role_texts(messages)
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
    """Examples whose answer is flagged, or whose request is flagged and answered with content of its
    kind or by agreeing, or that rename the assistant as an agent obeying without restriction
    (counted as screening counts them: whole texts, windows only past the classifier's length)."""
    agreeing: int
    """Examples that answer a flagged request by opening with an agreement ("Sure, here is ...")."""
    seconds: float = 0.0
    """What reading it cost (part of the gate's time)."""


def training_evidence(path: str | Path, moderator: Moderator) -> TrainingEvidence:
    """Read the training file the way the gate needs it: does the data teach harm, and does it teach
    saying yes to harm (forced affirmative prefixes)? The second tells that attack from a benign
    fine-tune that taught a friendly "Sure!", whose answers to harmful prompts look the same."""
    from tunegate.safety.judge import agrees_to_help
    from tunegate.safety.moderation import moderate_untruncated

    if not str(path) or not Path(path).is_file():
        return TrainingEvidence(examples=0, harmful=0, agreeing=0)
    start = time.perf_counter()
    examples, _ = read_examples(Path(path))
    step = max(1, -(-len(examples) // MAX_EVIDENCE_EXAMPLES))
    pairs, obedient = [], []
    for _, messages in examples[::step]:
        rt = {role: _decoded(text) for role, text in role_texts(messages).items()}
        pairs.append((rt.get("user", ""), rt.get("assistant", "")))
        obedient.append(demands_obedience(rt))
    texts = [t for pair in pairs for t in pair]
    # Read as screening reads them. Sentence windows over every text flagged the violent-sounding
    # sentences of benign coaching and pest-control answers (9 and 5 of 21 examples, against 2 and 1
    # whole), which switched the gate to its strict margins for benign data; the one attack that only
    # windows showed (an "absolutely obedient agent") is counted by its wording, as screening does.
    results = moderate_untruncated(moderator, texts) if texts else []
    thresholds = getattr(getattr(moderator, "classifier", None), "thresholds", None)
    fraction = ScreeningPolicy().suspicion_fraction
    harmful = agreeing = 0
    for k, (user, answer) in enumerate(pairs):
        request, reply = results[2 * k], results[2 * k + 1]
        user_flagged = bool(user) and request.flagged
        request_cats = set(request.flagged_categories()) if user_flagged else set()
        if taught_categories(request_cats, answer, reply if answer else None, thresholds, fraction) or obedient[k]:
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
