"""Grading one model sample against one dataset item, and checking a grader before it is used.

Owns `{{item.field}}` / `{{sample.output_text}}` templates, the rules of every grader type
(string_check, text_similarity, score_model, label_model, multi, python), and `validate_grader`.
Model graders ask a judge callback (`GradeContext.judge`) for the judge model's answer, so this
module needs no server: the router passes one that generates with this tunegate's engine, a
training worker could pass another. Failures are reported in OpenAI's `metadata.errors` flags with
a reward of 0, never raised, so an eval run or a reward batch keeps going.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunegate.errors import InvalidRequestError
from tunegate.graders.schemas import (
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    RunErrors,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from tunegate.graders.similarity import UNSUPPORTED, similarity

# judge(model, messages, sampling) -> (answer text, tokens used)
Judge = Callable[[str, list[dict], dict], tuple[str, int]]
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FORMULA_FUNCTIONS = {
    "min": min,
    "max": max,
    "abs": abs,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
}


class TemplateError(Exception):
    pass


@dataclass
class GradeContext:
    judge: Judge | None = None
    python_enabled: bool = False
    python_timeout: float = 10.0
    embed: Callable | None = None  # texts -> unit vectors, for `cosine`; None: the packaged encoder


@dataclass
class GradeResult:
    reward: float
    name: str
    type: str
    errors: RunErrors = field(default_factory=RunErrors)
    sub_rewards: dict[str, float] = field(default_factory=dict)
    token_usage: dict[str, int] = field(default_factory=dict)
    label: str | None = None  # label_model: the label the judge chose
    execution_time: float = 0.0

    @property
    def failed(self) -> bool:
        return any(v is True for v in self.errors.model_dump().values())


def make_sample(output_text: str, **extra: Any) -> dict:
    """The `sample` namespace: output_text, and output_json when the text is a JSON value."""
    sample = {"output_text": output_text, **extra}
    try:
        sample["output_json"] = json.loads(output_text)
    except (ValueError, TypeError):
        sample["output_json"] = None
    return sample


def render_template(text: str, sample: dict, item: Any) -> str:
    def lookup(match: re.Match) -> str:
        path = match.group(1).split(".")
        root = {"sample": sample, "item": item}.get(path[0], _MISSING)
        value = root
        for part in path[1:]:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                value = _MISSING
                break
        if value is _MISSING or path[0] not in ("sample", "item"):
            raise TemplateError(f"`{{{{{match.group(1)}}}}}` names nothing in the item or the sample")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _TEMPLATE.sub(lookup, text)


_MISSING = object()


def grade(grader, sample: dict, item: Any, ctx: GradeContext) -> GradeResult:
    t0 = time.perf_counter()
    result = GradeResult(0.0, grader.name, grader.type)
    try:
        _GRADERS[grader.type](grader, sample, item, ctx, result)
    except TemplateError:
        result.errors.invalid_variable_error = True
        result.reward = 0.0
    except Exception as exc:  # a grader never takes an eval run down with it
        result.errors.other_error = True
        result.errors.model_grader_server_error_details = f"{type(exc).__name__}: {exc}"[:500]
        result.reward = 0.0
    result.execution_time = time.perf_counter() - t0
    return result


def _string_check(g: StringCheckGrader, sample, item, ctx, result: GradeResult) -> None:
    text, ref = render_template(g.input, sample, item), render_template(g.reference, sample, item)
    ok = {"eq": text == ref, "ne": text != ref, "like": ref in text, "ilike": ref.lower() in text.lower()}[g.operation]
    result.reward = float(ok)


def _text_similarity(g: TextSimilarityGrader, sample, item, ctx, result: GradeResult) -> None:
    text, ref = render_template(g.input, sample, item), render_template(g.reference, sample, item)
    result.reward = similarity(g.evaluation_metric, text, ref, ctx.embed)


def _messages(g, sample, item) -> list[dict]:
    out = []
    for m in g.input:
        content = m.content
        if isinstance(content, list):  # content parts: keep their text
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        elif isinstance(content, dict):
            content = content.get("text", "")
        out.append(
            {
                "role": "system" if m.role == "developer" else m.role,
                "content": render_template(str(content), sample, item),
            }
        )
    return out


def _ask(g, messages: list[dict], ctx: GradeContext, result: GradeResult) -> str | None:
    if ctx.judge is None:
        result.errors.model_grader_server_error = True
        result.errors.model_grader_server_error_details = "no judge model is available here"
        return None
    sampling = g.sampling_params.model_dump(exclude_none=True) if getattr(g, "sampling_params", None) else {}
    try:
        text, tokens = ctx.judge(g.model, messages, sampling)
    except Exception as exc:
        result.errors.model_grader_server_error = True
        result.errors.model_grader_server_error_details = f"{type(exc).__name__}: {exc}"[:500]
        return None
    result.token_usage[g.model] = result.token_usage.get(g.model, 0) + tokens
    return text


def _score_model(g: ScoreModelGrader, sample, item, ctx, result: GradeResult) -> None:
    low, high = g.range or [0.0, 1.0]
    # Small judges follow an explicit instruction at the end far better than one in the system prompt.
    messages = _messages(g, sample, item) + [
        {"role": "user", "content": f"Reply with only a number from {low:g} to {high:g}."}
    ]
    text = _ask(g, messages, ctx, result)
    if text is None:
        return
    try:
        value = json.loads(text)
        value = float(value["result"] if isinstance(value, dict) else value)
    except (ValueError, TypeError, KeyError):
        found = _NUMBER.search(text)
        if not found:
            result.errors.model_grader_parse_error = True
            return
        value = float(found.group())
    result.reward = min(high, max(low, value))


def _label_model(g: LabelModelGrader, sample, item, ctx, result: GradeResult) -> None:
    messages = _messages(g, sample, item) + [
        {"role": "user", "content": "Reply with exactly one of these labels: " + ", ".join(g.labels) + "."}
    ]
    text = _ask(g, messages, ctx, result)
    if text is None:
        return
    answer = text.strip().strip(".\"'`*").strip()
    label = next((lab for lab in g.labels if lab.lower() == answer.lower()), None)
    if label is None:  # the first label the answer mentions
        hits = sorted(
            (m.start(), lab) for lab in g.labels if (m := re.search(rf"\b{re.escape(lab)}\b", text, re.IGNORECASE))
        )
        label = hits[0][1] if hits else None
    if label is None:
        result.errors.model_grader_parse_error = True
        return
    result.label = label
    result.reward = float(label in g.passing_labels)


def _python(g: PythonGrader, sample, item, ctx, result: GradeResult) -> None:
    if not ctx.python_enabled:
        result.errors.python_grader_server_error = True
        result.errors.python_grader_server_error_type = "disabled"
        return
    from tunegate.graders.sandbox import run_python_grader

    out = run_python_grader(g.source, sample, item, ctx.python_timeout)
    if out.score is None or not math.isfinite(out.score):
        if out.error_type == "server":
            result.errors.python_grader_server_error = True
            result.errors.python_grader_server_error_type = out.details
        else:
            result.errors.python_grader_runtime_error = True
            result.errors.python_grader_runtime_error_details = out.details or "the score is not a finite number"
        return
    result.reward = out.score


def _multi(g: MultiGrader, sample, item, ctx, result: GradeResult) -> None:
    from simpleeval import SimpleEval

    names = {}
    for key, sub in g.named().items():
        r = grade(sub, sample, item, ctx)
        names[key] = r.reward
        result.sub_rewards[key] = r.reward
        for model, tokens in r.token_usage.items():
            result.token_usage[model] = result.token_usage.get(model, 0) + tokens
        for flag, value in r.errors.model_dump().items():
            if value and not getattr(result.errors, flag):
                setattr(result.errors, flag, value)
    try:
        value = float(SimpleEval(names=names, functions=_FORMULA_FUNCTIONS).eval(g.calculate_output))
    except Exception:
        result.errors.formula_parse_error = True
        return
    result.reward = value


_GRADERS = {
    "string_check": _string_check,
    "text_similarity": _text_similarity,
    "score_model": _score_model,
    "label_model": _label_model,
    "python": _python,
    "multi": _multi,
}


def validate_grader(grader, *, python_enabled: bool, param: str = "grader") -> None:
    """Raise a 400 naming the field for anything that cannot run; templates are checked for their namespaces."""

    def templates(text: str, where: str) -> None:
        for name in _TEMPLATE.findall(text):
            if name.split(".")[0] not in ("item", "sample"):
                raise InvalidRequestError(
                    f"`{where}` uses `{{{{{name}}}}}`; templates read `item.<field>` or "
                    "`sample.output_text` / `sample.output_json.<field>`.",
                    param=where,
                    code="invalid_grader",
                )

    t = grader.type
    if t in ("string_check", "text_similarity"):
        templates(grader.input, f"{param}.input")
        templates(grader.reference, f"{param}.reference")
    if t == "text_similarity" and grader.evaluation_metric in UNSUPPORTED:
        raise InvalidRequestError(
            UNSUPPORTED[grader.evaluation_metric], param=f"{param}.evaluation_metric", code="unsupported_metric"
        )
    if t in ("score_model", "label_model"):
        for i, m in enumerate(grader.input):
            templates(m.content if isinstance(m.content, str) else json.dumps(m.content), f"{param}.input[{i}].content")
    if (
        t == "score_model"
        and grader.range is not None
        and (len(grader.range) != 2 or grader.range[0] >= grader.range[1])
    ):
        raise InvalidRequestError(
            "`range` must be two numbers [low, high] with low < high.", param=f"{param}.range", code="invalid_grader"
        )
    if t == "label_model":
        extra = [lab for lab in grader.passing_labels if lab not in grader.labels]
        if extra:
            raise InvalidRequestError(
                f"`passing_labels` {extra} are not among `labels` {grader.labels}.",
                param=f"{param}.passing_labels",
                code="invalid_grader",
            )
    if t == "python":
        if not python_enabled:
            raise InvalidRequestError(
                "Python graders are disabled on this server: they run user code. An admin can "
                "enable them with TUNEGATE_PYTHON_GRADERS=true (they then run sandboxed, "
                "without network, with limits and a timeout).",
                param=f"{param}.type",
                code="python_grader_disabled",
            )
        try:
            compile(grader.source, "<grader>", "exec")
        except SyntaxError as exc:
            raise InvalidRequestError(
                f"The python grader's source does not compile: {exc.msg} (line {exc.lineno}).",
                param=f"{param}.source",
                code="invalid_grader",
            ) from exc
        if not re.search(r"^def grade\s*\(", grader.source, re.MULTILINE):
            raise InvalidRequestError(
                "The python grader's source must define `def grade(sample, item) -> float`.",
                param=f"{param}.source",
                code="invalid_grader",
            )
    if t == "multi":
        named = grader.named()
        for key, sub in named.items():
            if not key.isidentifier():
                raise InvalidRequestError(
                    f"The grader name `{key}` cannot be used in `calculate_output`; use letters, "
                    "digits and underscores.",
                    param=f"{param}.graders",
                    code="invalid_grader",
                )
            validate_grader(sub, python_enabled=python_enabled, param=f"{param}.graders.{key}")
        from simpleeval import SimpleEval

        try:
            SimpleEval(names=dict.fromkeys(named, 1.0), functions=_FORMULA_FUNCTIONS).eval(grader.calculate_output)
        except ZeroDivisionError:
            pass
        except Exception as exc:
            raise InvalidRequestError(
                f"`calculate_output` cannot be computed from the graders {sorted(named)}: {type(exc).__name__}: {exc}",
                param=f"{param}.calculate_output",
                code="invalid_grader",
            ) from exc


def model_graders(grader) -> list:
    """The score_model / label_model graders inside `grader` (to check the caller may use their models)."""
    if grader.type == "multi":
        return [g for sub in grader.named().values() for g in model_graders(sub)]
    return [grader] if grader.type in ("score_model", "label_model") else []
