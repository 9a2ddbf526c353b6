"""Safety inside the job pipeline, as three steps that jobs/ runs (registered in the `job_steps`
plugin registry): screening a job's training data before it is queued, mixing the project's
refusal examples in before training, and the gate after training. The checks themselves live in
screen.py, mixing.py and gate.py.

Owns where reports are written (the job's artifact folder), the `moderation_checks` events, the
decisions that block with `unsafe_training_file` / `unsafe_model`, their audit entries, an admin's
override of a blocked model, and the gate run on demand on one checkpoint (its decision is stored
on the checkpoint). Never writes job rows: jobs/ acts on the decisions.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from tunegate.audit import record
from tunegate.db import Database, FineTunedModel, Job, Organization
from tunegate.errors import InvalidRequestError
from tunegate.jobs.lifecycle import add_event
from tunegate.jobs.pipeline import job_dir, succeed, trained_on
from tunegate.jobs.steps import Decision, JobContext, Step
from tunegate.jsonl import read_jsonl, write_jsonl
from tunegate.safety.policy import SafetyPolicy, policy_from_overrides
from tunegate.settings import Settings

__all__ = [
    "GATE",
    "gate_base_cache",
    "gate_judgement_cache",
    "SAFETY_MIXING",
    "SCREENING",
    "checkpoint_dir",
    "gate_checkpoint",
    "job_dir",
    "org_policy",
    "override",
]

log = logging.getLogger("tunegate.safety")


def gate_base_cache(settings: Settings) -> Path:
    """Where the base models' answers to the gate's prompts are cached (beside the converted models:
    the same for every job on a base model; `python -m tunegate.evals.prepare` fills it at set-up)."""
    return settings.models_dir / "safety" / "gate-base-answers"


def gate_judgement_cache(settings: Settings) -> Path:
    """Where the gate's verdicts on those cached base answers are kept (`memo.JudgementMemo`; filled
    at set-up too)."""
    return settings.models_dir / "safety" / "gate-base-judgements"


def org_policy(db: Database, org_id: str) -> SafetyPolicy:
    with db.session() as s:
        org = s.get(Organization, org_id)
        return policy_from_overrides((org.policy or {}) if org else {})


def screen(ctx: JobContext) -> Decision:
    """Moderate every example and run the job-level checks; refuse with `unsafe_training_file` when blocked."""
    from tunegate.safety.memo import MODERATION_MEMO, MemoModerator
    from tunegate.safety.moderation import get_moderator
    from tunegate.safety.screen import screen_training_file

    policy = org_policy(ctx.db, ctx.org_id)
    if not policy.screening.enabled or ctx.options.get("skip_screening"):
        ctx.emit(
            "Training-data screening is disabled by policy.",
            level="warn",
            type="moderation_checks",
            data={"check": "screening", "enabled": False},
        )
        return Decision()
    moderator = MemoModerator(get_moderator(ctx.settings))
    report = screen_training_file(ctx.training_path, moderator, policy)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    moderator.save(ctx.work_dir / MODERATION_MEMO)  # the gate reads the file again: see memo.py
    (ctx.work_dir / "screening_report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    summary = {
        "check": "screening",
        "blocked": report.blocked,
        "n_examples": report.n_examples,
        "n_flagged": report.n_flagged,
        "category_counts": report.category_counts,
        "findings": [f.model_dump() for f in report.findings][:20],
    }
    ctx.emit(
        f"Training-data screening: {report.message}",
        level="error" if report.blocked else "info",
        type="moderation_checks",
        data=summary,
    )
    kept = {"blocked": report.blocked, "message": report.message, "n_flagged": report.n_flagged}
    if not report.blocked:
        return Decision(record=kept)
    record(
        ctx.db,
        "job.blocked",
        org_id=ctx.org_id,
        actor="screening",
        object_id=ctx.job_id,
        details={"stage": "screening", "message": report.message},
    )
    return Decision(
        allow=False,
        code="unsafe_training_file",
        param="training_file",
        record=kept,
        message=f"{report.message} The full per-line report: GET /v1/fine_tuning/jobs/{ctx.job_id}/safety_report.",
    )


def mix(ctx: JobContext) -> Decision:
    """The training file with the project's refusal examples mixed in (~3%), unless turned off.

    Written once into the job folder so that a resumed run trains on exactly the same data.
    """
    from tunegate.safety.mixing import mix_safety_examples

    policy = org_policy(ctx.db, ctx.org_id)
    if not ctx.options.get("safety_mixing", policy.safety_mixing):
        return Decision()
    out = ctx.work_dir / "training_mixed.jsonl"
    if out.exists():
        return Decision(training_path=out)
    examples = read_jsonl(ctx.training_path)
    prompts_only = any(not any(m.get("role") == "assistant" for m in e.get("messages") or []) for e in examples)
    if prompts_only and all("messages" in e for e in examples):
        # Reinforcement prompts: the grader decides what is rewarded, so refusal demonstrations do not fit.
        ctx.emit(
            "Safety data mixing is for chat data: these reinforcement prompts are trained as they are; "
            "screening and the post-training gate apply.",
            type="moderation_checks",
            data={"check": "safety_mixing", "added": 0, "skipped": "prompt data"},
        )
        return Decision()
    if any("messages" not in e for e in examples):
        # Preference pairs (DPO): the refusal examples are chat data, and a harmful "rejected" answer to
        # pair them with is not something this project writes. Screening and the gate still apply.
        ctx.emit(
            "Safety data mixing is for chat data: this preference file is trained as it is; screening and "
            "the post-training gate apply.",
            type="moderation_checks",
            data={"check": "safety_mixing", "added": 0, "skipped": "preference data"},
        )
        return Decision()
    mixed = mix_safety_examples(examples, fraction=policy.safety_mixing_fraction, seed=ctx.seed)
    write_jsonl(out, mixed)
    ctx.emit(
        f"Safety data mixing: {len(mixed) - len(examples)} of the project's refusal examples were mixed "
        f"into {len(examples)} training examples.",
        type="moderation_checks",
        data={"check": "safety_mixing", "added": len(mixed) - len(examples)},
    )
    return Decision(training_path=out)


def gate(ctx: JobContext, *, adapter_dir: Path, model_id: str) -> Decision:
    """The post-training gate. Refuses with `unsafe_model` when the fine-tune lost safety behaviour."""
    from tunegate.safety.gate import run_gate, save_report
    from tunegate.safety.generation import GATE_GENERATION, shared_generator
    from tunegate.safety.moderation import get_moderator

    policy = org_policy(ctx.db, ctx.org_id)
    if not policy.gate.enabled:
        ctx.emit(
            "The post-training safety gate is disabled by policy.",
            level="warn",
            type="moderation_checks",
            data={"check": "gate", "enabled": False},
        )
        return Decision()
    ctx.emit(
        "Safety gate: generating answers from the base and the fine-tuned model on the harmful and benign suites.",
        type="moderation_checks",
        data={"check": "gate", "stage": "start"},
    )
    # Loaded once for the gate and the regression check after it (evals/checks.py).
    gen = shared_generator(ctx.settings, ctx.model, adapter_dir, policy.gate.max_new_tokens, GATE_GENERATION)
    cache = gate_base_cache(ctx.settings)
    from tunegate.safety.evidence import probe_context, training_evidence
    from tunegate.safety.memo import MODERATION_MEMO, MemoModerator

    shift, system = probe_context(ctx.training_path)  # ask as the data talks: its cipher, its system prompt
    moderator = get_moderator(ctx.settings)
    planned = gen.planned  # later steps' prompts (the regression check's) answered in the gate's pass
    # Screening's results for the file's texts, when it ran: only the examples mixed in after it are new.
    screened = MemoModerator.load(ctx.work_dir / MODERATION_MEMO, moderator)
    report = run_gate(
        gen.cached_base(cache),
        gen.tuned,
        moderator,
        policy,
        encoding_shift=shift,
        system_prompt=system,
        evidence=training_evidence(ctx.training_path, screened),
        base_judgements=gate_judgement_cache(ctx.settings),
    )
    report.timings["training_evidence_texts_from_screening"] = screened.given_hits
    # generate_tuned_s covers these too; the gate's own share of that pass, by token forwards:
    report.timings["generate_tuned_planned_prompts"] = planned
    report.timings["generate_tuned_own_share"] = round(gen.own_share, 3)
    save_report(report, ctx.work_dir)
    data = {
        "check": "gate",
        "decision": report.decision,
        "reasons": report.reasons,
        "base": report.base.model_dump(),
        "tuned": report.tuned.model_dump(),
        "categories": [c.model_dump() for c in report.categories],
        "answer_categories": [c.model_dump() for c in report.answer_categories],
        "timings": report.timings,
        "rules": [r.model_dump() for r in report.rules],
        "min_detectable_increase": report.min_detectable_increase,
        "encoding": report.encoding,
    }
    ctx.emit(report.summary(), level="error" if report.blocked else "info", type="moderation_checks", data=data)
    kept = {"decision": report.decision, "reasons": report.reasons}
    if not report.blocked:
        return Decision(record=kept)
    record(
        ctx.db,
        "job.blocked",
        org_id=ctx.org_id,
        actor="gate",
        object_id=ctx.job_id,
        details={"stage": "gate", "reasons": report.reasons, "model": model_id},
    )
    # jobs/ keeps the adapter registered but not deployable, so an admin can review and override.
    return Decision(
        allow=False,
        code="unsafe_model",
        record=kept,
        message="The fine-tuned model did not pass the safety gate: "
        + "; ".join(report.reasons)
        + f". It is not served. See GET /v1/fine_tuning/jobs/{ctx.job_id}/safety_report; an "
        "admin can override with a reason.",
    )


SCREENING = Step("screening", "before_queue", screen)
SAFETY_MIXING = Step("safety_mixing", "prepare_data", mix)
GATE = Step("gate", "after_training", gate)


def override(db: Database, settings: Settings, job_id: str, org_id: str, actor: str, reason: str) -> str:
    """An admin's decision to serve a model the gate blocked. Returns the model id."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.org_id != org_id:
            raise InvalidRequestError(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        if not job.error or job.error.get("code") != "unsafe_model":
            raise InvalidRequestError(
                f"Job {job_id} was not blocked by the safety gate; nothing to override.",
                param="fine_tuning_job_id",
                code="not_blocked",
            )
        ft = s.query(FineTunedModel).filter_by(job_id=job_id).one()
        model_id, adapter_dir = ft.id, Path(ft.adapter_path)
    add_event(
        db,
        job_id,
        f"Safety gate overridden by an admin: {reason}",
        level="warn",
        type="moderation_checks",
        data={"check": "override", "reason": reason},
    )
    succeed(db, settings, job_id, model_id, adapter_dir, override={"by": actor, "reason": reason})
    record(
        db,
        "safety.override",
        org_id=org_id,
        actor=actor,
        object_id=job_id,
        details={"reason": reason, "model": model_id},
    )
    return model_id


_gate_lock = threading.Lock()  # one gate at a time in this process: each loads a model


def checkpoint_dir(settings: Settings, job_id: str, checkpoint_id: str) -> Path:
    return job_dir(settings, job_id) / "checkpoint_gates" / checkpoint_id


def gate_checkpoint(db: Database, settings: Settings, checkpoint_id: str, actor: str) -> dict:
    """Run the post-training gate on one checkpoint (on demand) and record its decision on the
    checkpoint: `passed` makes it servable, `blocked` keeps it unservable. Returns the decision."""
    from tunegate.db import Checkpoint
    from tunegate.ids import now
    from tunegate.registry import verify_adapter
    from tunegate.safety.evidence import probe_context, training_evidence
    from tunegate.safety.gate import run_gate, save_report
    from tunegate.safety.generation import GATE_GENERATION, AdapterGenerator
    from tunegate.safety.memo import MODERATION_MEMO, MemoModerator
    from tunegate.safety.moderation import get_moderator

    with db.session() as s:
        ck = s.get(Checkpoint, checkpoint_id)
        job_id, model_id, stored = ck.job_id, ck.model_id, ck.path
        job = s.get(Job, job_id)
        org_id, base_name = job.org_id, job.model
    from tunegate.storage import open_storage

    storage = open_storage(settings)
    path = storage.fetch(stored)  # the checkpoint, by its storage key: this server's copy
    policy = org_policy(db, org_id)
    try:
        verify_adapter(path)
        with _gate_lock:
            gen = AdapterGenerator(settings, base_name, path, policy.gate.max_new_tokens, GATE_GENERATION)
            shift, system = probe_context(trained_on(path))  # the checkpoint's own training data
            moderator = get_moderator(settings)
            screened = MemoModerator.load(job_dir(settings, job_id) / MODERATION_MEMO, moderator)
            report = run_gate(
                gen.cached_base(gate_base_cache(settings)),
                gen.tuned,
                moderator,
                policy,
                encoding_shift=shift,
                system_prompt=system,
                evidence=training_evidence(trained_on(path), screened),
                base_judgements=gate_judgement_cache(settings),
            )
        save_report(report, checkpoint_dir(settings, job_id, checkpoint_id))
        storage.push(checkpoint_dir(settings, job_id, checkpoint_id))
        decision = {
            "decision": "blocked" if report.blocked else "passed",
            "reasons": report.reasons,
            "by": actor,
            "finished_at": now(),
        }
    except Exception as exc:  # a gate that could not run decides nothing: the checkpoint stays unservable
        log.exception("gate on checkpoint %s failed", checkpoint_id)
        decision = {
            "decision": "error",
            "reasons": [f"the gate could not run: {type(exc).__name__}: {exc}"],
            "by": actor,
            "finished_at": now(),
        }
    with db.session() as s:
        s.get(Checkpoint, checkpoint_id).gate = decision
    add_event(
        db,
        job_id,
        f"Safety gate on checkpoint {model_id}: {decision['decision']}"
        + (f" ({'; '.join(decision['reasons'])})" if decision["reasons"] else "")
        + ".",
        level="info" if decision["decision"] == "passed" else "error",
        type="moderation_checks",
        data={"check": "checkpoint_gate", "checkpoint": model_id, **decision},
    )
    record(db, "checkpoint.gated", org_id=org_id, actor=actor, object_id=model_id, details=decision)
    return decision
