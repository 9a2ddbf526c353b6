"""Executing eval runs inside the server: one background service that claims queued (or interrupted)
runs, generates each item's answer through the serving engine (its batching serves many items at
once), grades it with every testing criterion, and commits each output item as it finishes.

Durability: a run is claimed with a lease (a conditional UPDATE, so two servers on one database
never run it at once) that is renewed while it runs; after a crash or restart the lease expires and
the run continues from its first missing output item. Cancel is seen between items. Answers pass
the organisation's runtime moderation exactly as chat completions do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import select, update

from tunegate.auth import Principal
from tunegate.db import Eval, EvalOutputItem, EvalRun
from tunegate.errors import TunegateError
from tunegate.evals import service
from tunegate.graders.grade import GradeContext, TemplateError, grade, make_sample, render_template
from tunegate.ids import new_id, now

log = logging.getLogger("tunegate.evals")
LEASE_SECONDS = 15.0  # renewed every third of it while the run executes
CONCURRENCY = 16  # items in flight per run: enough to fill the engine's batch
DEFAULT_MAX_TOKENS = 256


class EvalRunner:
    is_worker = True  # started only where this server runs workers (`start_workers`)

    def __init__(self, app):
        self.app = app
        self.db = app.state.db
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                run_id = await asyncio.to_thread(self._claim)
                if run_id:
                    await self._execute(run_id)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad run stop the service
                log.exception("eval runner")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 2.0)
            except TimeoutError:
                pass

    def _claim(self) -> str | None:
        t = time.time()
        with self.db.session() as s:
            ids = s.scalars(
                select(EvalRun.id)
                .where(EvalRun.status.in_(("queued", "in_progress")), EvalRun.lease_until < t)
                .order_by(EvalRun.created_ns)
                .limit(5)
            ).all()
            for run_id in ids:
                claimed = s.execute(
                    update(EvalRun)
                    .where(EvalRun.id == run_id, EvalRun.lease_until < t, EvalRun.status.in_(("queued", "in_progress")))
                    .values(lease_until=t + LEASE_SECONDS, status="in_progress")
                ).rowcount
                if claimed:
                    return run_id
        return None

    def _renew(self, run_id: str) -> str:
        """Extend the lease; the run's status (a cancel shows here)."""
        with self.db.session() as s:
            row = s.get(EvalRun, run_id)
            if row is None:
                return "deleted"
            if row.status == "in_progress":
                row.lease_until = time.time() + LEASE_SECONDS
            return row.status

    def _finish(self, run_id: str, status: str, error: dict | None = None) -> None:
        with self.db.session() as s:
            row = s.get(EvalRun, run_id)
            if row is not None and row.status == "in_progress":
                row.status, row.error, row.lease_until = status, error, 0.0

    async def _execute(self, run_id: str) -> None:
        with self.db.session() as s:
            run = s.get(EvalRun, run_id)
            ev = s.get(Eval, run.eval_id)
        principal = Principal(**run.principal)
        try:
            rows = await asyncio.to_thread(service.item_rows, run.data_source, self._reader(principal))
        except TunegateError as exc:
            self._finish(run_id, "failed", {"code": exc.code or "invalid_data", "message": exc.message})
            return
        with self.db.session() as s:
            s.get(EvalRun, run_id).n_items = len(rows)
            done = set(s.scalars(select(EvalOutputItem.datasource_item_id).where(EvalOutputItem.run_id == run_id)))
        from jsonschema import Draft202012Validator

        validator = Draft202012Validator(ev.data_source_config.get("item_schema") or {})
        from tunegate.graders.service import make_judge

        loop = asyncio.get_running_loop()
        settings = self.app.state.settings
        ctx = GradeContext(
            judge=make_judge(self.app, principal, loop),
            python_enabled=settings.python_graders,
            python_timeout=settings.python_grader_timeout_seconds,
        )
        criteria = [_criterion(c) for c in ev.testing_criteria]
        moderation = await self._moderation(principal, run.model) if run.model else None
        pending = [i for i in range(len(rows)) if i not in done]
        state = {"status": "in_progress"}

        async def keep_lease():
            while state["status"] == "in_progress":
                await asyncio.sleep(LEASE_SECONDS / 3)
                state["status"] = await asyncio.to_thread(self._renew, run_id)

        lease = asyncio.create_task(keep_lease())
        try:
            for start in range(0, len(pending), CONCURRENCY):
                state["status"] = await asyncio.to_thread(self._renew, run_id)
                if state["status"] != "in_progress":
                    return  # canceled or deleted: what is done stays done
                chunk = pending[start : start + CONCURRENCY]
                await asyncio.gather(
                    *(self._item(run, ev, i, rows[i], validator, criteria, ctx, principal, moderation) for i in chunk)
                )
        finally:
            lease.cancel()
        self._finish(run_id, "completed")

    def _reader(self, principal: Principal):
        from tunegate.files.service import get as get_file

        def read(file_id: str) -> str:
            from tunegate.files.service import local_file

            row = get_file(self.db, principal, file_id, self.app.state.settings)
            with open(local_file(self.app.state.settings, row), encoding="utf-8") as f:
                return f.read()

        return read

    async def _moderation(self, principal: Principal, model: str):
        from tunegate.safety.jobs import org_policy
        from tunegate.safety.moderation import get_moderator
        from tunegate.safety.runtime import RuntimeModeration

        policy = await asyncio.to_thread(org_policy, self.db, principal.org_id)
        moderator = (
            await asyncio.to_thread(get_moderator, self.app.state.settings)
            if policy.runtime.input != "off" or policy.runtime.output != "off"
            else None
        )
        return RuntimeModeration.for_request(policy.runtime, None, moderator, self.db, principal, model)

    async def _item(
        self, run: EvalRun, ev: Eval, index: int, row: dict, validator, criteria, ctx, principal, moderation
    ) -> None:
        item = row.get("item")
        problems = [e.message for e in validator.iter_errors(item)]
        if problems:
            sample = {
                "error": {
                    "code": "invalid_item",
                    "message": "The item does not match the eval's item_schema: " + "; ".join(problems[:3]),
                }
            }
            return await asyncio.to_thread(self._save, run, index, item or {}, "error", [], sample)
        if run.data_source["type"] == "completions":
            sample = await self._generate(run, item, principal, moderation)
        else:
            given = row.get("sample") or {}
            text = given.get("output_text")
            if text is None and given.get("output"):
                text = (given["output"][0] or {}).get("content")
            sample = {**given, "output_text": text} if text is not None else dict(given)
        if sample.get("error"):
            return await asyncio.to_thread(self._save, run, index, item, "error", [], sample)
        grading_sample = make_sample(sample.get("output_text") or "")
        results = await asyncio.to_thread(_grade_all, criteria, grading_sample, item, ctx)
        status = (
            "error" if any(r.get("error") for r in results) else "pass" if all(r["passed"] for r in results) else "fail"
        )
        await asyncio.to_thread(self._save, run, index, item, status, results, sample)

    async def _generate(self, run: EvalRun, item: Any, principal: Principal, moderation) -> dict:
        from tunegate.models.service import resolve
        from tunegate.serve.engine import ServableModel
        from tunegate.serve.protocol import ChatCompletionRequest

        ds = run.data_source
        params = ds.get("sampling_params") or {}
        try:
            messages = _input_messages(ds["input_messages"], item)
        except TemplateError as exc:
            return {"error": {"code": "invalid_variable", "message": str(exc)}}
        max_tokens = params.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        sample = {
            "model": run.model,
            "input": messages,
            "seed": params.get("seed"),
            "temperature": params.get("temperature", 1.0),
            "top_p": params.get("top_p", 1.0),
            "max_completion_tokens": max_tokens,
        }
        try:
            resolved = await asyncio.to_thread(resolve, self.db, self.app.state.settings, principal, run.model)
            body = ChatCompletionRequest(
                model=run.model,
                messages=messages,
                max_completion_tokens=max_tokens,
                temperature=params.get("temperature"),
                top_p=params.get("top_p"),
                seed=params.get("seed"),
            )
            await moderation.check_input(messages)
            done = await moderation.check_completion(
                await self.app.state.chat.create(body, ServableModel(resolved.id, resolved.base, resolved.adapter_path))
            )
        except TunegateError as exc:
            return {**sample, "error": {"code": exc.code or "generation_error", "message": exc.message}}
        choice = done.choices[0]
        usage = done.usage.model_dump() if done.usage else {}
        return {
            **sample,
            "output": [{"role": "assistant", "content": choice.message.content}],
            "output_text": choice.message.content or "",
            "finish_reason": choice.finish_reason,
            "usage": {k: usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
            | {"cached_tokens": 0},
        }

    def _save(self, run: EvalRun, index: int, item: Any, status: str, results: list, sample: dict) -> None:
        with self.db.session() as s:
            if s.get(EvalOutputItem, (run.id, index)) is not None:
                return
            s.add(
                EvalOutputItem(
                    id=new_id("outputitem", 12),
                    run_id=run.id,
                    datasource_item_id=index,
                    eval_id=run.eval_id,
                    status=status,
                    datasource_item=item if isinstance(item, dict) else {"value": item},
                    results=results,
                    sample=sample,
                    created_at=now(),
                )
            )


def _criterion(raw: dict):
    from pydantic import TypeAdapter

    from tunegate.evals.schemas import TestingCriterion

    return TypeAdapter(TestingCriterion).validate_python(raw)


def _input_messages(spec: dict, item: Any) -> list[dict]:
    if spec["type"] == "item_reference":
        value: Any = {"item": item}
        for part in spec["item_reference"].split("."):
            if not isinstance(value, dict) or part not in value:
                raise TemplateError(f"`{spec['item_reference']}` is not in the item")
            value = value[part]
        if not isinstance(value, list):
            raise TemplateError(f"`{spec['item_reference']}` is not a list of messages")
        return [{"role": m.get("role"), "content": m.get("content")} for m in value]
    out = []
    for m in spec["template"]:
        content = m["content"]
        if isinstance(content, dict):
            content = content.get("text", "")
        elif isinstance(content, list):
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        out.append(
            {
                "role": "system" if m["role"] == "developer" else m["role"],
                "content": render_template(str(content), {}, item),
            }
        )
    return out


def passed(criterion, reward: float, label: str | None) -> bool:
    """OpenAI's pass rules: exact checks pass at 1, thresholds where given, labels by `passing_labels`."""
    t = criterion.type
    if t == "label_model":
        return label in criterion.passing_labels
    if t == "string_check":
        return reward >= 1.0
    threshold = getattr(criterion, "pass_threshold", None)
    if threshold is None:  # score_model / python without a threshold: the middle of the range
        low, high = getattr(criterion, "range", None) or [0.0, 1.0]
        threshold = (low + high) / 2
    return reward >= threshold


def _grade_all(criteria, sample: dict, item: Any, ctx: GradeContext) -> list[dict]:
    results = []
    for c in criteria:
        r = grade(c, sample, item, ctx)
        entry = {
            "name": c.name,
            "type": c.type,
            "score": r.reward,
            "passed": (not r.failed) and passed(c, r.reward, r.label),
            "sample": None,
        }
        if r.label is not None:
            entry["label"] = r.label
        if r.token_usage:
            entry["token_usage"] = r.token_usage
        if r.failed:
            entry["error"] = {k: v for k, v in r.errors.model_dump().items() if v}
        results.append(entry)
    return results
