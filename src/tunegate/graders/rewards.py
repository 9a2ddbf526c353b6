"""Graders as the rewards of reinforcement fine-tuning: checking a job's grader against its files,
and the reward function the training worker calls for each batch of sampled answers.

Registered in the `reward_graders` registry (plugins.py) as `graders`; the jobs stage reaches it
through `jobs.steps.reward_graders()` and never imports this stage. Owns nothing about training
(train/rft.py) or jobs; grading itself is grade.py's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tunegate.errors import InvalidRequestError, from_validation_errors
from tunegate.graders.grade import (
    _TEMPLATE,
    GradeContext,
    TemplateError,
    grade,
    make_sample,
    model_graders,
    render_template,
    validate_grader,
)
from tunegate.graders.schemas import Grader
from tunegate.jsonl import INVALID, numbered_jsonl

_GRADER = TypeAdapter(Grader)
MAX_PROBLEMS = 10


def parse(grader: dict, param: str):
    try:
        return _GRADER.validate_python(grader)
    except ValidationError as exc:
        err = from_validation_errors(exc.errors())
        raise InvalidRequestError(
            err.message.replace("`", f"`{param}.", 1) if err.param else err.message,
            param=f"{param}.{err.param}" if err.param else param,
            code="invalid_grader",
        ) from exc


def _templates(grader) -> list[str]:
    """Every template text of `grader` (a python grader reads `item` in code: nothing to check here)."""
    t = grader.type
    if t in ("string_check", "text_similarity"):
        return [grader.input, grader.reference]
    if t in ("score_model", "label_model"):
        return [m.content if isinstance(m.content, str) else json.dumps(m.content) for m in grader.input]
    if t == "multi":
        return [text for sub in grader.named().values() for text in _templates(sub)]
    return []


def item_fields(grader) -> list[str]:
    """The `item.<field>` names the grader's templates read, in order, without repeats."""
    names = [n for text in _templates(grader) for n in _TEMPLATE.findall(text) if n.split(".")[0] == "item"]
    return list(dict.fromkeys(names))


class GraderRewards:
    def check(self, grader: dict, *, settings, files: Sequence[tuple[str, str | Path]], param: str) -> dict:
        parsed = parse(grader, param)
        validate_grader(parsed, python_enabled=settings.python_graders, param=param)
        if model_graders(parsed):
            raise InvalidRequestError(
                "score_model and label_model graders cannot score reinforcement fine-tuning here yet: the "
                "training worker serves no judge model. Use string_check, text_similarity, python, or a "
                "multi grader of those.",
                param=f"{param}.type",
                code="unsupported_grader",
            )
        fields = item_fields(parsed)
        problems = []
        for file_param, path in files:
            for lineno, row in numbered_jsonl(path):
                if row is INVALID:
                    continue  # the file's own check reports it, with its line
                for name in fields:
                    try:
                        render_template("{{" + name + "}}", {}, row)
                    except TemplateError:
                        problems.append(f"line {lineno} of the {file_param.replace('_', ' ')} has no `{name[5:]}`")
        if problems:
            shown = "; ".join(problems[:MAX_PROBLEMS]) + (
                f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
            )
            raise InvalidRequestError(
                f"The grader reads {', '.join(f'`{{{{{n}}}}}`' for n in fields)}, but {shown}. Every row needs "
                "the fields the grader's `{{item.<field>}}` templates name, beside its `messages`.",
                param=param,
                code="unknown_template_field",
            )
        return _GRADER.dump_python(parsed, mode="json", exclude_none=True)

    def reward_fn(self, grader: dict, *, settings):
        parsed = _GRADER.validate_python(grader)
        ctx = GradeContext(
            python_enabled=settings.python_graders, python_timeout=settings.python_grader_timeout_seconds
        )

        def rewards(answers: list[str], items: list[dict]) -> tuple[list[float], dict[str, Any]]:
            results = [grade(parsed, make_sample(a), item, ctx) for a, item in zip(answers, items)]
            n = max(len(results), 1)
            extra = {"grader_error_rate": sum(r.failed for r in results) / n}
            for key in results[0].sub_rewards if results else {}:
                extra[f"reward_{key}"] = sum(r.sub_rewards.get(key, 0.0) for r in results) / n
            return [r.reward for r in results], extra

        return rewards


GRADER_REWARDS = GraderRewards()
