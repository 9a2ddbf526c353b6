"""Evals and runs in the store: create, list, retrieve, update, delete; queue and cancel runs; the run
object's counts (overall, per testing criterion, per model) computed from its output items.

Owns the rules of the Evals API (who sees what, what a run may read and which models it may use).
Executing runs belongs to runner.py; grading to graders/.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select

from tunegate.auth import Principal
from tunegate.db import Database, Eval, EvalOutputItem, EvalRun
from tunegate.errors import ConflictError, InvalidRequestError, NotFoundError
from tunegate.evals.schemas import (
    EvalCreate,
    EvalObject,
    EvalUpdate,
    OutputItemObject,
    PerModelUsage,
    PerTestingCriteriaResult,
    ResultCounts,
    RunCreate,
    RunObject,
)
from tunegate.graders.grade import model_graders, validate_grader
from tunegate.ids import new_id
from tunegate.settings import Settings

TERMINAL = ("completed", "failed", "canceled")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise InvalidRequestError("`limit` must be between 1 and 100.", param="limit")


def eval_object(row: Eval) -> EvalObject:
    cfg = dict(row.data_source_config)
    return EvalObject(
        id=row.id,
        name=row.name,
        created_at=row.created_at,
        testing_criteria=row.testing_criteria,
        metadata=row.metadata_,
        data_source_config=cfg,
    )


def create_eval(db: Database, settings: Settings, principal: Principal, body: EvalCreate, resolve_model) -> Eval:
    cfg = body.data_source_config
    if cfg.get("type") != "custom":
        raise InvalidRequestError(
            f"`data_source_config.type` {cfg.get('type')!r} is not supported here: use "
            '"custom" with an `item_schema` (logs and stored completions are not kept by '
            "this server).",
            param="data_source_config.type",
            code="unsupported_data_source",
        )
    if not isinstance(cfg.get("item_schema"), dict):
        raise InvalidRequestError(
            "`data_source_config.item_schema` must be a JSON schema object.", param="data_source_config.item_schema"
        )
    _check_schema(cfg["item_schema"])
    names = [c.name for c in body.testing_criteria]
    if len(set(names)) != len(names):
        raise InvalidRequestError(
            "Testing criteria need distinct `name`s (results are reported by name).", param="testing_criteria"
        )
    for i, criterion in enumerate(body.testing_criteria):
        validate_grader(criterion, python_enabled=settings.python_graders, param=f"testing_criteria[{i}]")
        for g in model_graders(criterion):
            resolve_model(g.model)
    schema = {"type": "object", "properties": {"item": cfg["item_schema"]}, "required": ["item"]}
    if cfg.get("include_sample_schema"):
        schema["properties"]["sample"] = {"type": "object", "properties": {"output_text": {"type": "string"}}}
        schema["required"].append("sample")
    row = Eval(
        id=new_id("eval", 12),
        org_id=principal.org_id,
        name=body.name or "eval",
        data_source_config={
            "type": "custom",
            "schema": schema,
            "item_schema": cfg["item_schema"],
            "include_sample_schema": bool(cfg.get("include_sample_schema")),
        },
        testing_criteria=[c.model_dump(exclude_none=True) for c in body.testing_criteria],
        metadata_=body.metadata,
    )
    with db.session() as s:
        s.add(row)
    return row


def _check_schema(schema: dict) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequestError(
            f"`data_source_config.item_schema` is not a valid JSON schema: {exc.message}",
            param="data_source_config.item_schema",
        ) from exc


def get_eval(db: Database, principal: Principal, eval_id: str) -> Eval:
    with db.session() as s:
        row = s.get(Eval, eval_id)
    if row is None or row.org_id != principal.org_id:
        raise NotFoundError(f"No such eval: {eval_id}", param="eval_id", code="eval_not_found")
    return row


def list_evals(db: Database, principal: Principal, *, after: str | None, limit: int, order: str) -> list[Eval]:
    _check_limit(limit)
    q = select(Eval).where(Eval.org_id == principal.org_id)
    if after:
        cursor = get_eval(db, principal, after)
        q = q.where(Eval.created_ns < cursor.created_ns if order == "desc" else Eval.created_ns > cursor.created_ns)
    q = q.order_by(Eval.created_ns.desc() if order == "desc" else Eval.created_ns.asc()).limit(limit + 1)
    with db.session() as s:
        return list(s.scalars(q).all())


def update_eval(db: Database, principal: Principal, eval_id: str, body: EvalUpdate) -> Eval:
    get_eval(db, principal, eval_id)
    with db.session() as s:
        row = s.get(Eval, eval_id)
        if body.name is not None:
            row.name = body.name
        if body.metadata is not None:
            row.metadata_ = body.metadata
    return get_eval(db, principal, eval_id)


def delete_eval(db: Database, principal: Principal, eval_id: str) -> None:
    get_eval(db, principal, eval_id)
    with db.session() as s:
        s.delete(s.get(Eval, eval_id))


# ---- runs --------------------------------------------------------------------------------------


def create_run(
    db: Database, settings: Settings, principal: Principal, eval_id: str, body: RunCreate, resolve_model, read_file
) -> EvalRun:
    ev = get_eval(db, principal, eval_id)
    ds = body.data_source
    if ds.source.type == "file_id":
        read_file(ds.source.id)  # 404 now for a file the caller cannot read
    model = None
    if ds.type == "completions":
        model = resolve_model(ds.model).id
        if ds.input_messages.type == "item_reference" and not ds.input_messages.item_reference.startswith("item."):
            raise InvalidRequestError(
                "`input_messages.item_reference` must name a field of the item, like `item.messages`.",
                param="data_source.input_messages.item_reference",
            )
    for criterion in ev.testing_criteria:  # the judges may have been deleted or blocked since the eval was made
        if criterion.get("type") in ("score_model", "label_model"):
            resolve_model(criterion["model"])
    row = EvalRun(
        id=new_id("evalrun", 12),
        eval_id=eval_id,
        org_id=principal.org_id,
        principal=dataclasses.asdict(principal),
        name=body.name or f"run on {model or 'jsonl'}",
        model=model,
        data_source=ds.model_dump(exclude_none=True),
        status="queued",
        metadata_=body.metadata,
    )
    with db.session() as s:
        s.add(row)
    return row


def get_run(db: Database, principal: Principal, eval_id: str, run_id: str) -> EvalRun:
    with db.session() as s:
        row = s.get(EvalRun, run_id)
    if row is None or row.org_id != principal.org_id or row.eval_id != eval_id:
        raise NotFoundError(f"No such run: {run_id}", param="run_id", code="run_not_found")
    return row


def list_runs(
    db: Database, principal: Principal, eval_id: str, *, after: str | None, limit: int, order: str, status: str | None
) -> list[EvalRun]:
    get_eval(db, principal, eval_id)
    _check_limit(limit)
    q = select(EvalRun).where(EvalRun.eval_id == eval_id)
    if status:
        q = q.where(EvalRun.status == status)
    if after:
        cursor = get_run(db, principal, eval_id, after)
        q = q.where(
            EvalRun.created_ns < cursor.created_ns if order == "desc" else EvalRun.created_ns > cursor.created_ns
        )
    q = q.order_by(EvalRun.created_ns.desc() if order == "desc" else EvalRun.created_ns.asc()).limit(limit + 1)
    with db.session() as s:
        return list(s.scalars(q).all())


def cancel_run(db: Database, principal: Principal, eval_id: str, run_id: str) -> EvalRun:
    get_run(db, principal, eval_id, run_id)
    with db.session() as s:
        row = s.get(EvalRun, run_id)
        if row.status in ("completed", "failed"):
            raise ConflictError(
                f"The run is already {row.status}; only queued or running runs can be canceled.",
                param="run_id",
                code="run_not_cancelable",
            )
        row.status = "canceled"
    return get_run(db, principal, eval_id, run_id)


def delete_run(db: Database, principal: Principal, eval_id: str, run_id: str) -> None:
    get_run(db, principal, eval_id, run_id)
    with db.session() as s:
        s.delete(s.get(EvalRun, run_id))


def run_object(db: Database, row: EvalRun, base_url: str = "") -> RunObject:
    with db.session() as s:
        items = s.execute(
            select(EvalOutputItem.status, EvalOutputItem.results, EvalOutputItem.sample).where(
                EvalOutputItem.run_id == row.id
            )
        ).all()
        ev = s.get(Eval, row.eval_id)
    counts = {"passed": 0, "failed": 0, "errored": 0}
    per: dict[str, list[int]] = {c["name"]: [0, 0] for c in (ev.testing_criteria if ev else [])}
    usage: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for status, results, sample in items:
        counts[{"pass": "passed", "fail": "failed"}.get(status, "errored")] += 1
        for r in results:
            if r.get("error"):
                continue
            per.setdefault(r["name"], [0, 0])[0 if r["passed"] else 1] += 1
        for model, u in _usages(results, sample):
            for k, v in u.items():
                usage[model][k] += v
    return RunObject(
        id=row.id,
        eval_id=row.eval_id,
        name=row.name,
        model=row.model,
        status=row.status,
        created_at=row.created_at,
        data_source=row.data_source,
        error=row.error,
        metadata=row.metadata_,
        report_url=f"{base_url}/#/evals/{row.eval_id}/runs/{row.id}",
        result_counts=ResultCounts(total=row.n_items if row.n_items is not None else len(items), **counts),
        per_testing_criteria_results=[
            PerTestingCriteriaResult(testing_criteria=k, passed=v[0], failed=v[1]) for k, v in per.items()
        ],
        per_model_usage=[
            PerModelUsage(
                model_name=m,
                invocation_count=u["invocation_count"],
                prompt_tokens=u["prompt_tokens"],
                completion_tokens=u["completion_tokens"],
                total_tokens=u["total_tokens"],
            )
            for m, u in usage.items()
        ],
    )


def _usages(results: list[dict], sample: dict):
    if sample.get("model") and sample.get("usage"):
        yield (
            sample["model"],
            {
                "invocation_count": 1,
                **{k: sample["usage"].get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
            },
        )
    for r in results:
        for model, tokens in (r.get("token_usage") or {}).items():
            yield model, {"invocation_count": 1, "total_tokens": tokens}


def list_output_items(
    db: Database,
    principal: Principal,
    eval_id: str,
    run_id: str,
    *,
    after: str | None,
    limit: int,
    order: str,
    status: str | None,
) -> list[EvalOutputItem]:
    get_run(db, principal, eval_id, run_id)
    _check_limit(limit)
    q = select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)
    if status:
        if status not in ("pass", "fail", "error"):
            raise InvalidRequestError("`status` filters output items by `pass`, `fail` or `error`.", param="status")
        q = q.where(EvalOutputItem.status == status)
    if after:
        with db.session() as s:
            cursor = s.scalar(select(EvalOutputItem).where(EvalOutputItem.id == after))
        if cursor is None or cursor.run_id != run_id:
            raise NotFoundError(f"No such output item: {after}", param="after")
        q = q.where(
            EvalOutputItem.datasource_item_id < cursor.datasource_item_id
            if order == "desc"
            else EvalOutputItem.datasource_item_id > cursor.datasource_item_id
        )
    key = EvalOutputItem.datasource_item_id
    q = q.order_by(key.desc() if order == "desc" else key.asc()).limit(limit + 1)
    with db.session() as s:
        return list(s.scalars(q).all())


def get_output_item(db: Database, principal: Principal, eval_id: str, run_id: str, item_id: str) -> EvalOutputItem:
    get_run(db, principal, eval_id, run_id)
    with db.session() as s:
        row = s.scalar(select(EvalOutputItem).where(EvalOutputItem.id == item_id))
    if row is None or row.run_id != run_id:
        raise NotFoundError(f"No such output item: {item_id}", param="output_item_id", code="output_item_not_found")
    return row


def output_item_object(row: EvalOutputItem) -> OutputItemObject:
    return OutputItemObject(
        id=row.id,
        run_id=row.run_id,
        eval_id=row.eval_id,
        created_at=row.created_at,
        status=row.status,
        datasource_item_id=row.datasource_item_id,
        datasource_item=row.datasource_item,
        results=row.results,
        sample=row.sample,
    )


def n_done(db: Database, run_id: str) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(EvalOutputItem).where(EvalOutputItem.run_id == run_id)))


def item_rows(ds: dict[str, Any], read_file) -> list[dict]:
    """The run's rows `{"item": ..., "sample": ...?}`, from inline content or a JSONL file."""
    import json

    if ds["source"]["type"] == "file_content":
        rows = ds["source"]["content"]
    else:
        rows = []
        for lineno, line in enumerate(read_file(ds["source"]["id"]).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise InvalidRequestError(
                    f"Line {lineno} of the data file is not JSON.",
                    param="data_source.source.id",
                    code="invalid_data_file",
                ) from exc
    return [r if isinstance(r, dict) and "item" in r else {"item": r} for r in rows]
