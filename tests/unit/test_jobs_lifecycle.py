"""The job state machine: only the table's transitions happen, each writes a typed `status` event,
a finished job keeps its outcome, an override completes a job exactly like a normal success, and
no module but jobs/lifecycle.py assigns a job's status."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from sqlalchemy import select

import tunegate
from tunegate.auth import Principal, create_key
from tunegate.db import FineTunedModel, Job, JobEvent, Organization, open_database
from tunegate.jobs import lifecycle
from tunegate.jobs.lifecycle import TRANSITIONS, IllegalTransition, transition
from tunegate.jobs.service import request_control

SRC = Path(tunegate.__file__).parent


@pytest.fixture()
def db(settings):
    settings.ensure_dirs()
    return open_database(settings.db_url)


def _job(db, status: str = "validating_files") -> str:
    create_key(db, "acme")
    with db.session() as s:
        org = s.scalar(select(Organization).where(Organization.name == "acme"))
        job = Job(
            id=f"ftjob-{status}",
            org_id=org.id,
            model="tiny",
            training_file="file-x",
            seed=1,
            method={},
            hyperparameters={},
            options={},
            status=status,
            result_files=[],
            progress={},
            safety={},
        )
        s.add(job)
    return job.id


def _status_events(db, job_id: str) -> list[dict]:
    with db.session() as s:
        return [
            e.data
            for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "status").order_by(JobEvent.seq)
            )
        ]


@pytest.mark.parametrize("current", list(TRANSITIONS))
def test_only_the_tables_transitions_are_allowed(db, current):
    job_id = _job(db, current)
    for to in lifecycle.STATUSES:
        with db.session() as s:
            job = s.get(Job, job_id)
            if to in TRANSITIONS[current]:
                transition(job, to, message="test")
                assert job.status == to
                s.rollback()
            else:
                with pytest.raises(IllegalTransition):
                    transition(job, to, message="test")
                assert job.status == current


def test_transition_sets_fields_and_writes_a_typed_event(db):
    job_id = _job(db, "running")
    with db.session() as s:
        job = s.get(Job, job_id)
        job.control, job.worker_pid = "cancel", 123
        transition(job, "cancelled", message="Training stopped: the job was cancelled.")
    with db.session() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.control, job.worker_pid) == ("cancelled", None, None) and job.finished_at
    assert _status_events(db, job_id) == [{"status": "cancelled", "previous": "running"}]
    with db.session() as s, pytest.raises(TypeError):
        transition(s.get(Job, job_id), "succeeded", message="x", no_such_field=1)


def test_a_finished_job_keeps_its_outcome(db):
    job_id = _job(db, "validating_files")
    principal = Principal(org_id=_org(db), org_name="acme", project_id="p", key_id="k", is_admin=False)
    request_control(db, principal, job_id, "cancel")
    # The file check finishing later (e.g. with a problem) must not turn the cancelled job into failed.
    assert lifecycle.fail(db, job_id, "invalid_training_file", "bad line 3") is False
    with db.session() as s:
        assert s.get(Job, job_id).status == "cancelled"
    assert _status_events(db, job_id) == [{"status": "cancelled", "previous": "validating_files"}]


def _org(db) -> str:
    with db.session() as s:
        return s.scalar(select(Organization).where(Organization.name == "acme")).id


def test_complete_is_the_same_for_success_and_override(db, tmp_path):
    ok, blocked = _job(db, "running"), None
    with db.session() as s:
        lifecycle.complete(s, s.get(Job, ok), "ft:tiny:acme::ok", tmp_path / "a", "file-result1", trained_tokens=9)
    blocked = "ftjob-blocked"
    with db.session() as s:
        row = Job(
            id=blocked,
            org_id=_org(db),
            model="tiny",
            training_file="file-x",
            seed=1,
            method={},
            hyperparameters={},
            options={},
            status="running",
            result_files=[],
            progress={},
            safety={},
        )
        s.add(row)
        s.flush()
        lifecycle.register_model(s, row, "ft:tiny:acme::blocked", tmp_path / "b", deployable=False)
    lifecycle.fail(db, blocked, "unsafe_model", "did not pass the gate")
    with db.session() as s, pytest.raises(IllegalTransition):  # a failed job succeeds only by an override
        lifecycle.complete(s, s.get(Job, blocked), "ft:tiny:acme::blocked", tmp_path / "b", "file-result2")
    with db.session() as s:
        lifecycle.complete(
            s,
            s.get(Job, blocked),
            "ft:tiny:acme::blocked",
            tmp_path / "b",
            "file-result2",
            override={"by": "admin", "reason": "red team"},
        )
    with db.session() as s:
        for job_id, model_id, result in (
            (ok, "ft:tiny:acme::ok", "file-result1"),
            (blocked, "ft:tiny:acme::blocked", "file-result2"),
        ):
            job = s.get(Job, job_id)
            assert (job.status, job.fine_tuned_model, job.result_files, job.error) == (
                "succeeded",
                model_id,
                [result],
                None,
            )
            assert s.get(FineTunedModel, model_id).deployable
        assert s.get(Job, blocked).safety["override"]["previous_error"]["code"] == "unsafe_model"
    assert _status_events(db, blocked)[-1] == {
        "status": "succeeded",
        "previous": "failed",
        "fine_tuned_model": "ft:tiny:acme::blocked",
    }


def _status_writes(tree: ast.AST) -> list[int]:
    """Lines that assign a `.status` attribute, pass `status=` to `Job(...)`, or `setattr(x, "status")`."""
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            elts = t.elts if isinstance(t, ast.Tuple) else [t]
            lines += [node.lineno for e in elts if isinstance(e, ast.Attribute) and e.attr == "status"]
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name == "Job" and any(k.arg == "status" for k in node.keywords):
                lines.append(node.lineno)
            if name == "setattr" and len(node.args) > 1 and getattr(node.args[1], "value", None) == "status":
                lines.append(node.lineno)
            if name == "values" and any(k.arg == "status" for k in node.keywords):  # update(Job).values(...)
                lines.append(node.lineno)
    return lines


def _uses_job_rows(tree: ast.AST) -> bool:
    """Modules that import the `Job` table (other tables - files, batches, evals, uploads - have
    statuses of their own, owned by their stages)."""
    return any(
        isinstance(n, ast.ImportFrom) and n.module == "tunegate.db" and any(a.name == "Job" for a in n.names)
        for n in ast.walk(tree)
    )


def test_no_module_but_the_lifecycle_assigns_a_job_status():
    offenders, scanned = [], []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not _uses_job_rows(tree) or rel == "jobs/lifecycle.py":
            continue
        scanned.append(rel)
        lines = _status_writes(tree)
        if rel == "jobs/service.py":  # creates the row in the machine's first state, and nothing else
            created = [
                k.value.value
                for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Job"
                for k in n.keywords
                if k.arg == "status"
            ]
            assert created == ["validating_files"] and len(lines) == 1
            continue
        offenders += [f"{rel}:{n}" for n in lines]
    assert {"jobs/executor.py", "jobs/worker.py", "jobs/pipeline.py", "safety/jobs.py"} <= set(scanned)
    assert not offenders, f"job status assigned outside jobs/lifecycle.py: {offenders}"


def test_the_scan_sees_the_forms_a_status_write_takes():
    code = "job.status = 'x'\njob.status, job.error = 'x', None\nsetattr(job, 'status', 'x')\nJob(status='x')\n"
    assert _status_writes(ast.parse(code)) == [1, 2, 3, 4]


def test_the_dashboard_takes_the_status_sets_from_the_lifecycle():
    from tunegate.dashboard import STATIC_DIR, lifecycle_js

    js = lifecycle_js()
    assert f"UNFINISHED = new Set({json.dumps(sorted(lifecycle.UNFINISHED))})" in js
    assert f"TERMINAL = new Set({json.dumps(sorted(lifecycle.TERMINAL))})" in js
    # No page keeps its own list of statuses: they import ../lifecycle.js.
    copies = [p.name for p in STATIC_DIR.rglob("*.js") if '"validating_files", "queued"' in p.read_text()]
    assert not copies
