"""An in-memory TaskQueue: the SQL queue's protocol (docs/task-queue.md) over a dict, for fast
unit tests of the worker. It passes the same contract tests as the SQL queue
(tests/unit/test_task_queue_contract.py); it keeps nothing across a restart and bills nothing,
so it is never used to serve.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from imagesynth.accounts.models import TaskTerms
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.errors import FailureCode
from imagesynth.tasks.events import CLAIMABLE, ENDED, PROGRESS, EventHub
from imagesynth.tasks.models import ImageResult, Task


class InMemoryTaskQueue:
    """tasks.ports.TaskQueue and LeaseReaper in one process's memory. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._tasks: dict[str, Task] = {}
        self._turns: dict[str, int] = {}  # key id -> the claim count when it last had a turn
        self._claims = 0
        self._seq = 0
        self._lock = threading.Lock()
        self.events = EventHub()  # tasks.ports.TaskEvents, published as the SQL stores do

    # -- filling it (what the task service does on the SQL store) --------------------------

    def add(
        self,
        api_key_id: str,
        model: str,
        params: GenerationParams,
        *,
        max_attempts: int = 3,
        terms: TaskTerms | None = None,
        prompt_ready: bool = True,
        task_id: str | None = None,
    ) -> Task:
        """Queue a PENDING task."""
        with self._lock:
            self._seq += 1
            task = Task(
                id=task_id or str(uuid.uuid4()),
                api_key_id=api_key_id,
                model=model,
                params=params,
                status=TaskStatus.PENDING,
                request_id=str(uuid.uuid4()),
                max_attempts=max_attempts,
                created_at=self.clock(),
                progress_total=params.steps,
                seq=self._seq,
                terms=terms or TaskTerms(),
                prompt_ready=prompt_ready,
            )
            self._tasks[task.id] = task
        if prompt_ready:
            self.events.publish(CLAIMABLE, model)
        return task

    def get_task(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def request_cancel(self, task_id: str) -> None:
        """Ask the worker of a RUNNING task to stop (what a sync caller's hang-up does)."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and task.status == TaskStatus.RUNNING:
                self._tasks[task_id] = dataclasses.replace(task, cancel_requested=True)

    # -- TaskQueue ------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        models: Sequence[str],
        lease_seconds: float,
        *,
        batch_key: str | None = None,
        max_n: int | None = None,
    ) -> Task | None:
        with self._lock:
            running: dict[tuple[str, str], int] = {}
            for t in self._tasks.values():
                if t.status == TaskStatus.RUNNING:
                    running[t.api_key_id, t.model] = running.get((t.api_key_id, t.model), 0) + 1
            heads: dict[tuple[str, str], Task] = {}
            for t in self._tasks.values():
                if t.status != TaskStatus.PENDING or not t.prompt_ready or t.model not in models:
                    continue
                if batch_key is not None and (
                    t.params.batch_key != batch_key or (max_n is not None and t.params.n > max_n)
                ):
                    continue
                at = (t.api_key_id, t.model)
                if at not in heads or t.seq < heads[at].seq:
                    heads[at] = t
            ready = [t for at, t in heads.items() if running.get(at, 0) < t.terms.in_flight]
            if not ready:
                return None
            chosen = min(ready, key=lambda t: (self._turns.get(t.api_key_id, 0), t.seq))
            now = self.clock()
            claimed = dataclasses.replace(
                chosen,
                status=TaskStatus.RUNNING,
                worker_id=worker_id,
                attempts=chosen.attempts + 1,
                lease_until=now + lease_seconds,
                started_at=chosen.started_at if chosen.started_at is not None else now,
                progress_step=0,
            )
            self._tasks[claimed.id] = claimed
            self._claims += 1
            self._turns[claimed.api_key_id] = self._claims
            return claimed

    def heartbeat(self, worker_id: str, lease_seconds: float) -> set[str]:
        with self._lock:
            cancelled = set()
            until = self.clock() + lease_seconds
            for t in list(self._tasks.values()):
                if t.worker_id == worker_id and t.status == TaskStatus.RUNNING:
                    self._tasks[t.id] = dataclasses.replace(t, lease_until=until)
                    if t.cancel_requested:
                        cancelled.add(t.id)
            return cancelled

    def _owned(self, task_id: str, worker_id: str, attempt: int) -> Task | None:
        t = self._tasks.get(task_id)
        if (
            t is None
            or t.worker_id != worker_id
            or t.attempts != attempt
            or t.status != TaskStatus.RUNNING
        ):
            return None
        return t

    def set_progress(
        self, task_id: str, worker_id: str, attempt: int, step: int, previews: int | None = None
    ) -> bool:
        with self._lock:
            t = self._owned(task_id, worker_id, attempt)
            if t is None:
                return False
            made = t.previews_made if previews is None else previews
            self._tasks[task_id] = dataclasses.replace(t, progress_step=step, previews_made=made)
        self.events.publish(PROGRESS, task_id)
        return True

    def finish(
        self,
        task_id: str,
        worker_id: str,
        attempt: int,
        status: TaskStatus,
        results: Sequence[ImageResult] = (),
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        assert status.is_final
        with self._lock:
            t = self._owned(task_id, worker_id, attempt)
            if t is None:
                return False
            self._tasks[task_id] = dataclasses.replace(
                t,
                status=status,
                results=list(results),
                error_code=error_code,
                error_message=error_message,
                finished_at=self.clock(),
                lease_until=None,
                progress_step=t.progress_total
                if status == TaskStatus.SUCCEEDED
                else t.progress_step,
            )
        self.events.publish(ENDED, task_id)
        self.events.publish(CLAIMABLE, t.model)
        return True

    def release(self, task_id: str, worker_id: str, attempt: int) -> bool:
        with self._lock:
            t = self._owned(task_id, worker_id, attempt)
            if t is None:
                return False
            self._tasks[task_id] = dataclasses.replace(
                t,
                status=TaskStatus.PENDING,
                worker_id=None,
                lease_until=None,
                attempts=t.attempts - 1,
                progress_step=0,
            )
        self.events.publish(CLAIMABLE, t.model)
        return True

    # -- LeaseReaper ----------------------------------------------------------------------

    def reap_expired_leases(self) -> list[tuple[str, TaskStatus]]:
        with self._lock:
            now = self.clock()
            reaped = []
            for t in list(self._tasks.values()):
                if t.status != TaskStatus.RUNNING or t.lease_until is None or t.lease_until >= now:
                    continue
                lost = not t.cancel_requested and t.attempts >= t.max_attempts
                if t.cancel_requested:
                    status = TaskStatus.CANCELED
                elif lost:
                    status = TaskStatus.FAILED
                else:
                    status = TaskStatus.PENDING
                self._tasks[t.id] = dataclasses.replace(
                    t,
                    status=status,
                    error_code=str(FailureCode.WORKER_LOST) if lost else None,
                    error_message=FailureCode.WORKER_LOST.message if lost else None,
                    finished_at=now if status.is_final else None,
                    worker_id=None,
                    lease_until=None,
                    progress_step=0,
                )
                reaped.append((t.id, status))
        for task_id, status in reaped:
            if status.is_final:
                self.events.publish(ENDED, task_id)
            self.events.publish(CLAIMABLE, self._tasks[task_id].model)
        return reaped
