"""Runs batches: every line through the same path as the live endpoint (model access, runtime
moderation, the serving engine), at a lower priority than interactive traffic, durably.

Priority: at most `Settings.batch_concurrency` lines of all batches are in the engine at once (fewer
than its batch size, so interactive requests always find free slots), and no new line is started
while an interactive request is in flight or anything waits in the engine's queue.
Durability: each finished line is committed (`batch_lines`) together with the request counts, and
a restarted server runs only the lines without a record, so no line is lost and none is recorded
twice (a line cut off by the crash had no record and runs again). Finalizing writes the output and
error files in input order. A batch past its `expires_at` ends `expired`: its unfinished lines go
to the error file with `batch_expired`.
"""

from __future__ import annotations

import asyncio
import json
import logging

from sqlalchemy import select

from tunegate.auth import Principal
from tunegate.batches.service import FINISHED, read_lines
from tunegate.db import ApiKey, Batch, BatchLine, Database, File, Organization
from tunegate.errors import RateLimitError, TunegateError
from tunegate.files import service as files
from tunegate.files.uploads import expires_at
from tunegate.ids import new_id, now

log = logging.getLogger("tunegate.batches")
ACTIVE = ("in_progress", "cancelling", "finalizing")


def _principal(db: Database, row: Batch) -> Principal | None:
    """The batch creator's rights, re-read for every run (a revoked key stops its batches)."""
    with db.session() as s:
        key = s.get(ApiKey, row.key_id) if row.key_id else None
        if key is None or key.revoked_at is not None:
            return None
        org = s.get(Organization, row.org_id)
        return Principal(
            org_id=row.org_id, org_name=org.name, project_id=key.project_id, key_id=key.id, is_admin=key.is_admin
        )


class BatchRunner:
    """A server service (started and stopped with the app) that works through active batches."""

    is_worker = True  # like the job supervisor: not started when a server runs without workers

    def __init__(self, app, poll_s: float = 0.5):
        self.app = app
        self.db: Database = app.state.db
        self.settings = app.state.settings
        self.poll_s = poll_s
        self._task: asyncio.Task | None = None
        self._slots = asyncio.Semaphore(self.settings.batch_concurrency)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _loop(self) -> None:
        running: dict[str, asyncio.Task] = {}
        while True:
            try:
                with self.db.session() as s:
                    ids = list(s.scalars(select(Batch.id).where(Batch.status.in_(ACTIVE)).order_by(Batch.created_ns)))
                for batch_id in ids:
                    if batch_id not in running or running[batch_id].done():
                        running[batch_id] = asyncio.create_task(self.run(batch_id))
                for batch_id in [b for b, t in running.items() if t.done()]:
                    running.pop(batch_id)
            except Exception:  # a database hiccup must not end the runner
                log.exception("batch runner loop")
            await asyncio.sleep(self.poll_s)

    def _input_lines(self, file_id: str) -> list[tuple[int, str]]:
        with self.db.session() as s:
            f = s.get(File, file_id)
        return [] if f is None else read_lines(files.local_file(self.settings, f))

    def _row(self, batch_id: str) -> Batch:
        with self.db.session() as s:
            return s.get(Batch, batch_id)

    async def run(self, batch_id: str) -> None:
        """Run the lines of one batch that have no record yet, then finalize it."""
        row = self._row(batch_id)
        if row.status == "in_progress":
            principal = await asyncio.to_thread(_principal, self.db, row)
            with self.db.session() as s:
                done = set(s.scalars(select(BatchLine.line).where(BatchLine.batch_id == batch_id)))
            lines = await asyncio.to_thread(self._input_lines, row.input_file_id)
            todo = [(n, t) for n, t in lines if n not in done]
            tasks = [asyncio.create_task(self._line(row, principal, n, t)) for n, t in todo]
            try:
                while tasks:
                    _, pending = await asyncio.wait(tasks, timeout=self.poll_s)
                    tasks = list(pending)
                    current = self._row(batch_id)
                    if current.status != "in_progress" or now() >= current.expires_at:
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                        break
            finally:
                for t in tasks:
                    t.cancel()
        await self._finalize(batch_id)

    async def _wait_turn(self) -> None:
        """Interactive requests first: no new batch line while they wait for the engine."""
        engine = getattr(self.app.state.chat, "engine", None)
        live = getattr(self.app.state, "live_chats", None)
        # Engine queue (batch lines waiting count too) and interactive requests in flight at the HTTP edge.
        while getattr(engine, "waiting_requests", lambda: 0)() > 0 or (live and live["n"] > 0):
            await asyncio.sleep(0.05)

    async def _line(self, row: Batch, principal: Principal | None, lineno: int, text: str) -> None:
        async with self._slots:
            await self._wait_turn()
            if self._row(row.id).status != "in_progress":
                return
            obj = json.loads(text)
            delay = 0.2
            while True:  # a full engine or a spent rate limit delays a line; it never fails it
                try:
                    status, body = await self._execute(row.endpoint, principal, obj["body"])
                    break
                except RateLimitError:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    if self._row(row.id).status != "in_progress":
                        return
            rec = {
                "id": new_id("batch_req", 12),
                "custom_id": obj["custom_id"],
                "response": {"status_code": status, "request_id": body.get("id") or new_id("req", 12), "body": body},
                "error": None,
            }
            ok = status == 200
            with self.db.session() as s:
                if s.get(BatchLine, (row.id, lineno)) is not None:  # never record a line twice
                    return
                s.add(BatchLine(batch_id=row.id, line=lineno, ok=ok, record=rec))
                b = s.get(Batch, row.id)
                counts = dict(b.request_counts)
                counts["completed" if ok else "failed"] += 1
                b.request_counts = counts

    async def _execute(self, endpoint: str, principal: Principal | None, body: dict) -> tuple[int, dict]:
        if principal is None:
            return 401, {
                "error": {
                    "message": "The API key that created this batch was revoked.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        try:
            if endpoint == "/v1/moderations":
                from tunegate.safety.moderation import create_response, get_moderator
                from tunegate.safety.schemas import parse_moderation_input

                texts = parse_moderation_input(body.get("input"))
                moderator = await asyncio.to_thread(get_moderator, self.settings)
                result = await asyncio.to_thread(create_response, moderator, texts, body.get("model"))
                return 200, result.model_dump(mode="json", by_alias=True)
            from tunegate.serve.protocol import ChatCompletionRequest
            from tunegate.serve.router import complete

            completion = await complete(self.app, principal, ChatCompletionRequest.model_validate(body))
            return 200, completion.model_dump(mode="json")
        except RateLimitError:
            raise
        except TunegateError as exc:
            return exc.status_code, exc.to_dict()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch line failed")
            return 500, {
                "error": {
                    "message": "The server had an error while processing this request.",
                    "type": "server_error",
                    "param": None,
                    "code": "internal_error",
                }
            }

    async def _finalize(self, batch_id: str) -> None:
        row = self._row(batch_id)
        if row.status in FINISHED:
            return
        expired = row.status == "in_progress" and now() >= row.expires_at
        with self.db.session() as s:
            gone = s.get(File, row.input_file_id) is None
        if gone:  # the input file was deleted (or expired) under the batch: it cannot finish
            with self.db.session() as s:
                b = s.get(Batch, batch_id)
                b.status, b.times = "failed", {**b.times, "failed_at": now()}
                b.errors = {
                    "data": [
                        {
                            "code": "input_file_gone",
                            "line": None,
                            "param": "input_file_id",
                            "message": "The input file was deleted before the batch finished.",
                        }
                    ]
                }
            return
        if row.status == "in_progress" and not expired:
            with self.db.session() as s:
                n_done = len(list(s.scalars(select(BatchLine.line).where(BatchLine.batch_id == batch_id))))
            if n_done < row.request_counts.get("total", 0):
                return  # lines left (e.g. an engine error ended the loop): the next poll runs them
        await asyncio.to_thread(self._write_files, batch_id, expired)

    def _write_files(self, batch_id: str, expired: bool) -> None:
        with self.db.session() as s:
            row = s.get(Batch, batch_id)
            row.times = {**row.times, "finalizing_at": row.times.get("finalizing_at") or now()}
            recs = {r.line: r for r in s.scalars(select(BatchLine).where(BatchLine.batch_id == batch_id))}
        ok, failed = [], []
        counts = dict(row.request_counts)
        for lineno, text in self._input_lines(row.input_file_id):
            if lineno in recs:
                (ok if recs[lineno].ok else failed).append(recs[lineno].record)
            elif expired:  # OpenAI's line for a request the window did not reach
                cid = json.loads(text).get("custom_id")
                failed.append(
                    {
                        "id": new_id("batch_req", 12),
                        "custom_id": cid,
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed before the completion window expired.",
                        },
                    }
                )
                counts["failed"] += 1

        def store(records: list[dict], kind: str) -> str | None:
            if not records:
                return None
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
            f = files.store_bytes(
                self.db,
                self.settings,
                row.org_id,
                purpose="batch_output",
                filename=f"{batch_id}_{kind}.jsonl",
                data=data,
            )
            if row.output_expires_after:
                files.set_expiry(self.db, f.id, expires_at(f.created_at, row.output_expires_after))
            return f.id

        out_id, err_id = store(ok, "output"), store(failed, "error")
        t = now()
        with self.db.session() as s:
            b = s.get(Batch, batch_id)
            status = "expired" if expired else "cancelled" if b.status == "cancelling" else "completed"
            b.status, b.output_file_id, b.error_file_id, b.request_counts = status, out_id, err_id, counts
            b.times = {
                **b.times,
                {"expired": "expired_at", "cancelled": "cancelled_at", "completed": "completed_at"}[status]: t,
            }
