"""The after-training regression step of the job pipeline: the hallucination/regression check
(regression.py) beside the safety gate, and the best checkpoint by validation metric.

Registered in the `job_steps` registry as `regression` (phase `after_training`). It writes
`regression_report.json` into the job folder, emits a `regression_check` event with the rates and
intervals, and answers `warn` (the model is served; the event says what rose) or `block` (the job
fails with `model_regression`) according to the server's `TUNEGATE_REGRESSION_CHECK` (default warn).

`regression_plan`, registered before the gate, only plans the check's fine-tuned prompts on the
shared model (safety/generation.py `plan`): the gate's pass then decodes them in the same batches,
so the fine-tuned model answers every after-training prompt in one pass instead of two. The
gate's time therefore includes these answers (an upper bound on its own cost).
"""

from __future__ import annotations

import json
from pathlib import Path

from tunegate.db import File, Job
from tunegate.jobs.steps import Decision, JobContext, Step

MAX_NEW_TOKENS = 40


def regression_base_cache(settings) -> Path:
    """Where the base models' answers to the regression check's questions are cached (filled at set-up
    for the default model by `python -m tunegate.evals.prepare`)."""
    return settings.models_dir / "evals" / "regression-base-answers"


def best_checkpoint(work_dir: Path) -> dict | None:
    """The kept checkpoint with the best validation figure: lowest full_valid_loss (SFT, DPO) or highest
    full_valid_reward_mean (reinforcement)."""
    found = []
    for meta_path in (Path(work_dir) / "checkpoints").glob("step-*/meta.json"):
        metrics = json.loads(meta_path.read_text()).get("metrics") or {}
        if metrics.get("full_valid_reward_mean") is not None:
            found.append((-metrics["full_valid_reward_mean"], metrics["step"], "full_valid_reward_mean", metrics))
        elif metrics.get("full_valid_loss") is not None:
            found.append((metrics["full_valid_loss"], metrics["step"], "full_valid_loss", metrics))
    if not found:
        return None
    _, step, name, metrics = min(found)
    return {"step": step, "metric": name, "value": metrics[name]}


def _validation_path(ctx: JobContext) -> str | None:
    """This worker's copy of the job's validation file, if it has one."""
    from tunegate.storage import open_storage

    with ctx.db.session() as s:
        job = s.get(Job, ctx.job_id)
        valid = s.get(File, job.validation_file) if job and job.validation_file else None
    return str(open_storage(ctx.settings).fetch(valid.path)) if valid else None


def plan_regression(ctx: JobContext, *, adapter_dir: Path, model_id: str) -> Decision:
    """Before the gate: plan the check's fine-tuned prompts, so the gate's pass answers them too."""
    from tunegate.evals.regression import tuned_conversations
    from tunegate.safety.generation import shared_generator

    if ctx.settings.regression_check != "off":
        gen = shared_generator(ctx.settings, ctx.model, adapter_dir, MAX_NEW_TOKENS)
        gen.plan(tuned_conversations(_validation_path(ctx)))
    return Decision()


def regression_check(ctx: JobContext, *, adapter_dir: Path, model_id: str) -> Decision:
    from tunegate.evals.regression import run_check
    from tunegate.safety.generation import release_shared, shared_generator

    mode = ctx.settings.regression_check
    best = best_checkpoint(ctx.work_dir)
    if best is not None:
        best["model"] = f"{model_id}:ckpt-step-{best['step']}"
        ctx.emit(
            f"Best checkpoint by validation: step {best['step']} ({best['metric']} {best['value']:.4f}); "
            f"use it as `{best['model']}`.",
            type="message",
            data={"check": "best_checkpoint", **best},
        )
    if mode == "off":
        return Decision(record={"best_checkpoint": best})
    valid_path = _validation_path(ctx)
    ctx.emit(
        "Regression check: base and fine-tuned answer the closed-book questions"
        + (" and the validation prompts." if valid_path else "."),
        data={"check": "regression", "stage": "start"},
    )
    gen = shared_generator(ctx.settings, ctx.model, adapter_dir, MAX_NEW_TOKENS)  # the gate's model, if it ran
    try:
        report = run_check(gen.cached_base(regression_base_cache(ctx.settings)), gen.tuned, valid_path)
    finally:
        release_shared()  # the last after-training step: the worker needs the memory no longer
    report["best_checkpoint"] = best
    report["mode"] = mode
    (ctx.work_dir / "regression_report.json").write_text(json.dumps(report, indent=1))
    cb = report["closed_book"]
    summary = {
        k: {"base": cb["base"][k], "fine_tuned": cb["fine_tuned"][k]}
        for k in ("confidently_wrong", "correct_abstention", "correct_known")
    }
    data = {
        "check": "regression",
        "mode": mode,
        "flags": report["flags"],
        "closed_book": summary,
        "validation": report.get("validation"),
        "best_checkpoint": best,
    }
    text = (
        f"Regression check: confidently wrong {cb['base']['confidently_wrong']['rate']:.0%} -> "
        f'{cb["fine_tuned"]["confidently_wrong"]["rate"]:.0%}, correct "I don\'t know" '
        f"{cb['base']['correct_abstention']['rate']:.0%} -> {cb['fine_tuned']['correct_abstention']['rate']:.0%}"
    )
    if "validation" in report and report["validation"]["n"]:
        v = report["validation"]
        text += f", validation similarity {v['base_mean']:.2f} -> {v['fine_tuned_mean']:.2f}"
    text += ". " + "; ".join(report["flags"]) + "." if report["flags"] else ". No significant rise."
    flagged = bool(report["flags"])
    ctx.emit(text, level="warn" if flagged else "info", data=data)
    record = {"flags": report["flags"], "mode": mode, "best_checkpoint": best}
    if flagged and mode == "block":
        return Decision(
            allow=False,
            code="model_regression",
            record=record,
            message="The fine-tuned model hallucinates more than its base: "
            + "; ".join(report["flags"])
            + ". It is not served (policy `regression_check: block`).",
        )
    return Decision(record=record)


REGRESSION_PLAN = Step("regression_plan", "after_training", plan_regression)
REGRESSION = Step("regression", "after_training", regression_check)
