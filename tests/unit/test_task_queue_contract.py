"""The TaskQueue contract (tasks/ports.py, docs/task-queue.md), checked against every
implementation: the SQL queue on SQLite and on PostgreSQL, and the in-memory fake the worker's
unit tests use. A fake that passes these behaves like the real queue where a worker can tell.

Expired leases need no sleeping: a claim with a negative lease is expired at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from imagesynth.accounts.models import TaskTerms
from imagesynth.db import SqlStores
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.errors import FailureCode
from imagesynth.tasks.memory_queue import InMemoryTaskQueue
from imagesynth.tasks.models import ImageResult, Task
from imagesynth.tasks.ports import LeaseReaper, TaskQueue

PARAMS = GenerationParams(
    prompt="a lighthouse",
    negative_prompt="",
    width=512,
    height=512,
    n=2,
    seed=7,
    steps=4,
    guidance=5.0,
    prompt_extend=False,
    watermark=False,
)
LEASE = 30.0
EXPIRED = -1.0  # a lease that has run out the moment it is taken
MODEL = "wan2.2-t2i-flash"


class Queue(TaskQueue, LeaseReaper, Protocol):
    pass


@dataclass
class Backend:
    """One implementation, with the two things the contract needs that the port leaves to
    others: queueing a task (the task service's job) and reading it back."""

    queue: Queue
    add: Callable[..., Task]
    get: Callable[[str], Task]
    request_cancel: Callable[[str], object]


def _sql(stores: SqlStores) -> Backend:
    def add(
        key: str = "key-a",
        model: str = MODEL,
        *,
        in_flight: int = 100,
        max_attempts: int = 3,
        prompt_ready: bool = True,
    ) -> Task:
        return stores.tasks.insert_task(
            task_id=str(uuid.uuid4()),
            api_key_id=key,
            model=model,
            params=PARAMS,
            request_id=str(uuid.uuid4()),
            workspace=None,
            max_attempts=max_attempts,
            terms=TaskTerms(in_flight=in_flight),
            rewrite_prompt=not prompt_ready,
        )

    def get(task_id: str) -> Task:
        task = stores.tasks.get_task(task_id)
        assert task is not None
        return task

    return Backend(stores.queue, add, get, stores.tasks.request_cancel)


def _memory() -> Backend:
    queue = InMemoryTaskQueue()

    def add(
        key: str = "key-a",
        model: str = MODEL,
        *,
        in_flight: int = 100,
        max_attempts: int = 3,
        prompt_ready: bool = True,
    ) -> Task:
        return queue.add(
            key,
            model,
            PARAMS,
            max_attempts=max_attempts,
            terms=TaskTerms(in_flight=in_flight),
            prompt_ready=prompt_ready,
        )

    def get(task_id: str) -> Task:
        task = queue.get_task(task_id)
        assert task is not None
        return task

    return Backend(queue, add, get, queue.request_cancel)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres), "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        yield _memory()
        return
    url = (
        f"sqlite:///{tmp_path / 'queue.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    stores = SqlStores.open(url)
    try:
        yield _sql(stores)
    finally:
        stores.close()


def claim(b: Backend, worker: str = "w1", lease: float = LEASE) -> Task:
    task = b.queue.claim(worker, [MODEL], lease)
    assert task is not None, "nothing to claim"
    return task


def test_an_empty_queue_has_nothing_to_claim(backend: Backend) -> None:
    assert backend.queue.claim("w1", [MODEL], LEASE) is None
    assert backend.queue.claim("w1", [], LEASE) is None


def test_a_claim_leases_the_oldest_task_of_the_workers_models(backend: Backend) -> None:
    backend.add(model="qwen-image")
    first, second = backend.add(), backend.add()
    got = claim(backend)
    assert got.id == first.id
    assert got.status is TaskStatus.RUNNING
    assert (got.worker_id, got.attempts) == ("w1", 1)
    assert got.lease_until is not None and got.started_at is not None
    assert got.lease_until > got.started_at
    assert backend.get(first.id) == got
    assert claim(backend, "w2").id == second.id
    assert backend.queue.claim("w3", [MODEL], LEASE) is None  # qwen-image is not served


def test_keys_take_turns(backend: Backend) -> None:
    flood = [backend.add("key-a") for _ in range(3)]
    other = backend.add("key-b")
    order = [claim(backend).id for _ in range(4)]
    assert order == [flood[0].id, other.id, flood[1].id, flood[2].id]


def test_a_key_never_runs_more_than_its_in_flight_limit(backend: Backend) -> None:
    a1, a2 = backend.add("key-a", in_flight=1), backend.add("key-a", in_flight=1)
    b1 = backend.add("key-b", in_flight=1)
    assert claim(backend).id == a1.id
    assert claim(backend).id == b1.id
    assert backend.queue.claim("w1", [MODEL], LEASE) is None  # a2 waits for a1
    assert backend.queue.finish(a1.id, "w1", 1, TaskStatus.SUCCEEDED, [])
    assert claim(backend).id == a2.id


def test_tasks_waiting_for_their_prompt_are_not_claimed(backend: Backend) -> None:
    backend.add(prompt_ready=False)
    assert backend.queue.claim("w1", [MODEL], LEASE) is None


def test_finish_is_fenced_by_worker_and_attempt(backend: Backend) -> None:
    backend.add()
    task = claim(backend, "w1")
    results = [ImageResult(blob_key=f"{task.id}/1/0.png"), ImageResult(code="X", message="y")]
    assert not backend.queue.finish(task.id, "w2", 1, TaskStatus.SUCCEEDED, results)
    assert not backend.queue.finish(task.id, "w1", 2, TaskStatus.SUCCEEDED, results)
    assert backend.get(task.id).status is TaskStatus.RUNNING
    assert backend.queue.finish(task.id, "w1", 1, TaskStatus.SUCCEEDED, results)
    done = backend.get(task.id)
    assert done.status is TaskStatus.SUCCEEDED
    assert done.results == results
    assert done.finished_at is not None and done.lease_until is None
    assert done.progress_step == done.progress_total == PARAMS.steps
    # A finished task stays finished.
    assert not backend.queue.finish(task.id, "w1", 1, TaskStatus.FAILED, [], "X", "y")
    assert not backend.queue.set_progress(task.id, "w1", 1, 2)


def test_a_failure_keeps_its_code_and_message(backend: Backend) -> None:
    backend.add()
    task = claim(backend)
    code = FailureCode.ALGO
    assert backend.queue.finish(task.id, "w1", 1, TaskStatus.FAILED, [], code, code.message)
    failed = backend.get(task.id)
    assert (failed.status, failed.error_code, failed.error_message) == (
        TaskStatus.FAILED,
        "InternalError.Algo",
        code.message,
    )


def test_progress_is_recorded_only_by_the_owning_attempt(backend: Backend) -> None:
    backend.add()
    task = claim(backend)
    assert backend.queue.set_progress(task.id, "w1", 1, 3)
    assert not backend.queue.set_progress(task.id, "w2", 1, 4)
    assert not backend.queue.set_progress(task.id, "w1", 2, 4)
    assert backend.get(task.id).progress_step == 3


def test_heartbeat_extends_leases_and_reports_cancellations(backend: Backend) -> None:
    backend.add("key-a")
    backend.add("key-b")
    mine, other = claim(backend, "w1", lease=1.0), claim(backend, "w2")
    assert backend.queue.heartbeat("w1", LEASE) == set()
    renewed = backend.get(mine.id)
    assert renewed.lease_until is not None and mine.lease_until is not None
    assert renewed.lease_until > mine.lease_until
    backend.request_cancel(mine.id)
    backend.request_cancel(other.id)
    assert backend.queue.heartbeat("w1", LEASE) == {mine.id}


def test_release_hands_the_task_back_without_using_an_attempt(backend: Backend) -> None:
    backend.add()
    task = claim(backend, "w1")
    assert not backend.queue.release(task.id, "w2", 1)
    assert backend.queue.release(task.id, "w1", 1)
    back = backend.get(task.id)
    assert (back.status, back.attempts, back.worker_id) == (TaskStatus.PENDING, 0, None)
    again = claim(backend, "w2")
    assert (again.id, again.attempts) == (task.id, 1)


def test_an_expired_lease_is_requeued_and_its_worker_fenced_out(backend: Backend) -> None:
    backend.add()
    task = claim(backend, "w1", lease=EXPIRED)
    assert backend.queue.reap_expired_leases() == [(task.id, TaskStatus.PENDING)]
    assert backend.queue.reap_expired_leases() == []  # idempotent
    assert backend.get(task.id).status is TaskStatus.PENDING
    rerun = claim(backend, "w2")
    assert rerun.attempts == 2
    # The first worker comes back too late: its outcome is discarded.
    assert not backend.queue.finish(task.id, "w1", 1, TaskStatus.SUCCEEDED, [])
    assert backend.queue.finish(task.id, "w2", 2, TaskStatus.SUCCEEDED, [])


def test_a_live_lease_is_not_reaped(backend: Backend) -> None:
    backend.add()
    task = claim(backend)
    assert backend.queue.reap_expired_leases() == []
    assert backend.get(task.id).status is TaskStatus.RUNNING


def test_a_task_that_used_every_attempt_fails_as_worker_lost(backend: Backend) -> None:
    task = backend.add(max_attempts=2)
    for attempt in (1, 2):
        assert claim(backend, f"w{attempt}", lease=EXPIRED).attempts == attempt
        backend.queue.reap_expired_leases()
    lost = backend.get(task.id)
    assert lost.status is TaskStatus.FAILED
    assert lost.error_code == FailureCode.WORKER_LOST
    assert lost.error_message == FailureCode.WORKER_LOST.message
    assert lost.finished_at is not None
    assert backend.queue.claim("w3", [MODEL], LEASE) is None


def test_an_expired_lease_of_a_cancelled_task_ends_it_cancelled(backend: Backend) -> None:
    backend.add()
    task = claim(backend, lease=EXPIRED)
    backend.request_cancel(task.id)
    assert backend.queue.reap_expired_leases() == [(task.id, TaskStatus.CANCELED)]
    assert backend.get(task.id).status is TaskStatus.CANCELED
