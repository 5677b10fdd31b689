"""The task stores as their consumers see them: narrow protocols, one per consumer.

The SQL stores in imagesynth.db implement them for SQLite and PostgreSQL;
tasks.memory_queue.InMemoryTaskQueue implements TaskQueue for fast worker tests, and both pass
the same contract tests (tests/unit/test_task_queue_contract.py). The protocol behind them is
in docs/task-queue.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from imagesynth.accounts.models import KeyStanding, TaskTerms
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.tasks.models import ImageResult, Task, TaskFilter


class TaskQueue(Protocol):
    """What a worker does with the queue."""

    def claim(
        self,
        worker_id: str,
        models: Sequence[str],
        lease_seconds: float,
        *,
        batch_key: str | None = None,
        max_n: int | None = None,
    ) -> Task | None:
        """The next PENDING task of one of `models`, now RUNNING and leased to `worker_id`
        (attempts + 1); None when none may run. Keys take turns, and a key's tasks of a model
        never exceed its in-flight limit. With `batch_key`, only a task of that
        GenerationParams.batch_key with at most `max_n` images (one to join a batch)."""
        ...

    def heartbeat(self, worker_id: str, lease_seconds: float) -> set[str]:
        """Extend every lease of the worker; returns the ids whose cancel was requested."""
        ...

    def set_progress(
        self, task_id: str, worker_id: str, attempt: int, step: int, previews: int | None = None
    ) -> bool:
        """Record denoising progress (and, with `previews`, how many preview images this
        attempt has stored); False when this attempt no longer owns the task."""
        ...

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
        """End the task (and bill it), fenced by worker and attempt: False means the lease
        was lost and the outcome must be discarded."""
        ...

    def release(self, task_id: str, worker_id: str, attempt: int) -> bool:
        """Hand the task back to the queue on shutdown; the attempt does not count."""
        ...


class TaskEvents(Protocol):
    """Wake-ups instead of polling (tasks/events.py): hints to look at the queue again, never
    the record. Callbacks run on the publisher's thread and must not block."""

    def on_claimable(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(model)` whenever a task of `model` may have become claimable;
        returns the unsubscribe function."""
        ...

    def on_ended(self, task_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(task_id)` when that task reaches a final status; returns the
        unsubscribe function."""
        ...

    def on_change(self, task_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(task_id)` when that task's progress or previews move on or it
        ends (progress streams); returns the unsubscribe function."""
        ...

    def on_rewrite(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(model)` whenever a task starts waiting for its prompt rewrite."""
        ...


class LeaseReaper(Protocol):
    """What housekeeping does about workers that stopped heartbeating."""

    def reap_expired_leases(self) -> list[tuple[str, TaskStatus]]:
        """RUNNING tasks whose lease ran out: back to PENDING, or FAILED after their last
        attempt, or CANCELED if asked; returns (id, new status) of each."""
        ...


class TaskStore(Protocol):
    """What the task service does for clients."""

    def insert_task(
        self,
        *,
        task_id: str,
        api_key_id: str,
        model: str,
        params: GenerationParams,
        request_id: str,
        workspace: str | None,
        max_attempts: int,
        terms: TaskTerms | None = None,
        admit: Callable[[KeyStanding], None] | None = None,
        month_start: float = 0.0,
        rewrite_prompt: bool = False,
        callback_url: str | None = None,
    ) -> Task: ...

    def get_task(self, task_id: str, api_key_id: str | None = None) -> Task | None: ...

    def list_tasks(
        self, api_key_id: str, flt: TaskFilter, offset: int, limit: int
    ) -> tuple[int, list[Task]]: ...

    def cancel_pending(self, task_id: str, api_key_id: str) -> bool: ...

    def request_cancel(self, task_id: str) -> TaskStatus | None: ...


class ExpiringTasks(Protocol):
    """What housekeeping does about tasks past their retention."""

    def expired_task_ids(self, retention_seconds: float, limit: int = 500) -> list[str]: ...

    def delete_tasks(self, task_ids: Sequence[str]) -> int: ...


class PromptQueue(Protocol):
    """What the prompt stage (prompt_extend) does with tasks waiting for their prompt."""

    def claim_prompt(self, lease_seconds: float) -> Task | None:
        """The oldest task whose prompt is still to be rewritten, leased for that long."""
        ...

    def set_actual_prompt(self, task_id: str, prompt: str, note: str | None) -> bool:
        """Record the prompt the pipeline will get, and let workers take the task."""
        ...


class WorkerPresence(Protocol):
    """What a worker says about itself, so that readiness can tell whether anyone serves a
    model (the workers table: db/workers.py)."""

    def beat(self, worker_id: str, models: Sequence[str]) -> None:
        """Record that this worker is alive and serves `models` (last_seen: the database's
        clock, so several machines agree)."""
        ...

    def leave(self, worker_id: str) -> None:
        """Forget this worker: it stopped cleanly."""
        ...


@dataclass(frozen=True)
class WorkerSeen:
    """A worker's last heartbeat, as the workers table holds it."""

    worker_id: str
    models: tuple[str, ...]
    seconds_ago: float


@dataclass(frozen=True)
class FailedTask:
    """A task that ended FAILED, for the operator's list of recent failures."""

    task_id: str
    api_key_id: str
    model: str
    code: str
    message: str
    created_at: float
    finished_at: float | None


class ServiceState(Protocol):
    """What /ready, /metrics and the admin API's queue and failure pages read from the
    database at request (scrape) time."""

    def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        ...

    def live_workers(self, window_seconds: float) -> dict[str, int]:
        """model -> how many workers serving it were seen within the last `window_seconds`."""
        ...

    def worker_count(self, window_seconds: float) -> int:
        """How many workers were seen within the last `window_seconds`."""
        ...

    def task_counts(self) -> dict[tuple[str, str], int]:
        """(model, status) -> how many tasks the table holds."""
        ...

    def queue_depths(self) -> dict[str, tuple[int, float]]:
        """model -> (tasks waiting, seconds the oldest has waited), for models with any."""
        ...

    def workers_seen(self, window_seconds: float) -> list[WorkerSeen]:
        """The workers seen within the last `window_seconds`, most recent first."""
        ...

    def recent_failures(self, limit: int) -> list[FailedTask]:
        """The last `limit` tasks that ended FAILED, across keys, newest first."""
        ...
