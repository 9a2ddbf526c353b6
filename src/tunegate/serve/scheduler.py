"""The scheduler of one engine worker: the waiting queue, admission into the running batch, fairness
across organisations and API keys, and deadlines.

Owns the waiting requests and the decision of which choices join the batch next. Waiting requests
are kept per organisation and, inside it, per API key; admission takes the head request of the
organisation whose turn it is (of that organisation's key whose turn it is), then moves both to the
back of the line. So a caller who queued many requests, or one request with many choices, gets one
turn per round like everyone else: it cannot starve the others (with one caller this is plain FIFO).
Admission stops at the batch's free rows, the prefill token budget (one huge prompt goes alone) and
when the adapter a request needs has no free slot. Does not own the model or its cache
(`serve/runner.py`, `serve/kv_cache.py`) or the streams (`serve/hf_engine.py`).

Thread-safety: `add`, `wake` and `cancel` may be called from any thread; the rest only from the
worker thread that owns the scheduler.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunegate.errors import TunegateError
from tunegate.serve.engine import GenerationRequest


@dataclass(eq=False)
class Pending:
    """A request inside the engine, from `submit` until its last choice ends."""

    req: GenerationRequest
    deadline: float  # time.monotonic() after which it fails with a timeout
    admitted: int = 0  # choices admitted into the batch so far
    finished: int = 0
    cancelled: bool = False
    failed: bool = False

    @property
    def gone(self) -> bool:
        return self.cancelled or self.failed

    def overdue(self, now: float) -> bool:
        return not self.gone and self.deadline < now


@dataclass
class Admission:
    """Choices `first .. first + count - 1` of `request` join the batch on adapter slot `slot`."""

    request: Pending
    first: int
    count: int
    slot: int


# (adapter path or None, slots used by the batch so far) -> slot, or None when all are busy; may raise
AcquireSlot = Callable[[Path | None, set[int]], "int | None"]


class Scheduler:
    """Waiting requests of one worker (see module docstring)."""

    def __init__(self, on_leave: Callable[[Pending], None] = lambda p: None):
        self.cv = threading.Condition()
        self._orgs: OrderedDict[str, OrderedDict[str, deque[Pending]]] = OrderedDict()
        self._on_leave = on_leave  # a request left the waiting queue (admitted whole, cancelled, failed)

    # --- any thread --------------------------------------------------------------------------------

    def add(self, p: Pending) -> None:
        with self.cv:
            keys = self._orgs.setdefault(p.req.org_id, OrderedDict())
            keys.setdefault(p.req.key_id, deque()).append(p)
            self.cv.notify()

    def wake(self) -> None:
        with self.cv:
            self.cv.notify()

    # --- worker thread -----------------------------------------------------------------------------

    def waiting(self) -> list[Pending]:
        with self.cv:
            return [p for keys in self._orgs.values() for q in keys.values() for p in q]

    def waiting_choices(self) -> int:
        return sum(p.req.n - p.admitted for p in self.waiting())

    def wait_for_work(self, timeout: float) -> bool:
        """Block until something waits (or `timeout`); True if something does."""
        with self.cv:
            if not self._orgs:
                self.cv.wait(timeout)
            return bool(self._orgs)

    def gather(self, window_s: float, enough: int) -> None:
        """Requests that arrive together share the first prefill and batch: wait a moment for them."""
        end = time.monotonic() + window_s
        while time.monotonic() < end and self.waiting_choices() < enough:
            with self.cv:
                self.cv.wait(max(0.0, end - time.monotonic()))

    def expire(self, now: float) -> list[Pending]:
        """Drop cancelled requests; remove and return those past their deadline (to be failed)."""
        overdue = []
        for p in self.waiting():
            if p.cancelled or p.failed:
                self._remove(p)
            elif p.overdue(now):
                self._remove(p)
                overdue.append(p)
        return overdue

    def drain(self) -> list[Pending]:
        """Remove and return every waiting request (the worker stops or could not load its model)."""
        out = self.waiting()
        for p in out:
            self._remove(p)
        return out

    def admit(
        self, room: int, in_use: set[int], prefill_budget: int, acquire: AcquireSlot
    ) -> tuple[list[Admission], list[tuple[Pending, TunegateError]]]:
        """Choose waiting choices for `room` free batch rows, in turn across organisations and keys.
        Returns the admissions and the requests that failed to get their adapter (to be failed)."""
        admitted: list[Admission] = []
        failed: list[tuple[Pending, TunegateError]] = []
        while room > 0:
            p = self._head()
            if p is None:
                break
            if p.gone:
                self._remove(p)
                continue
            if admitted and len(p.req.prompt_ids) > prefill_budget:
                break
            try:
                slot = acquire(p.req.model.adapter_path, in_use)
            except TunegateError as exc:
                self._remove(p)
                failed.append((p, exc))
                continue
            if slot is None:  # every adapter slot is used by running sequences: wait for one to finish
                break
            in_use.add(slot)
            prefill_budget -= len(p.req.prompt_ids)
            take = min(room, p.req.n - p.admitted)
            admitted.append(Admission(p, p.admitted, take, slot))
            p.admitted += take
            room -= take
            if p.admitted == p.req.n:
                self._remove(p)
            self._rotate(p)
        return admitted, failed

    def _head(self) -> Pending | None:
        with self.cv:
            for keys in self._orgs.values():
                for q in keys.values():
                    return q[0]
        return None

    def _rotate(self, p: Pending) -> None:
        """`p`'s organisation, and its key inside it, go to the back of the line."""
        with self.cv:
            keys = self._orgs.get(p.req.org_id)
            if keys is None:
                return
            self._orgs.move_to_end(p.req.org_id)
            if p.req.key_id in keys:
                keys.move_to_end(p.req.key_id)

    def _remove(self, p: Pending) -> None:
        with self.cv:
            keys = self._orgs.get(p.req.org_id)
            q = keys.get(p.req.key_id) if keys is not None else None
            if q is None or p not in q:
                return
            q.remove(p)
            if not q:
                del keys[p.req.key_id]
            if not keys:
                del self._orgs[p.req.org_id]
        self._on_leave(p)
