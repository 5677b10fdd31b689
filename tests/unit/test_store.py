"""The task-queue protocol of SqlStores (docs/task-queue.md), against SQLite and PostgreSQL.

Every test runs once per backend: SQLite on a temporary file, and PostgreSQL in a fresh schema
when IMAGESYNTH_TEST_POSTGRES_DSN (a postgresql:// URL) is set.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from imagesynth.accounts.keys import KeyService, hash_key
from imagesynth.accounts.models import TaskTerms
from imagesynth.db import Database, SqlStores
from imagesynth.db.schema import init_schema
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.errors import InvalidApiKey, MissingApiKey
from imagesynth.tasks.models import ImageResult, Task, TaskFilter

# Leases that run out within a test; EXPIRE sleeps just past them.
SHORT_LEASE = 0.05
EXPIRE = 0.12
LONG_LEASE = 30.0
# No in-flight limit to speak of: the queue-protocol tests are not about limits.
UNLIMITED = TaskTerms(in_flight=100)

PARAMS = GenerationParams(
    prompt="a red fox in the snow",
    negative_prompt="blurry",
    width=1024,
    height=1024,
    n=2,
    seed=42,
    steps=4,
    guidance=7.5,
    prompt_extend=True,
    watermark=False,
    style="<auto>",
)


def add_task(
    store: SqlStores,
    *,
    model: str = "wanx-v1",
    key: str = "key-a",
    max_attempts: int = 3,
    workspace: str | None = None,
    params: GenerationParams = PARAMS,
    terms: TaskTerms = UNLIMITED,
    task_id: str | None = None,
    **more: Any,
) -> Task:
    """Queue a task; `more` goes to insert_task as it is (admit, rewrite_prompt, ...)."""
    return store.tasks.insert_task(
        task_id=task_id or str(uuid.uuid4()),
        api_key_id=key,
        model=model,
        params=params,
        request_id=str(uuid.uuid4()),
        workspace=workspace,
        max_attempts=max_attempts,
        terms=terms,
        **more,
    )


def claimed(store: SqlStores, worker: str, models: list[str], lease: float = LONG_LEASE) -> Task:
    task = store.queue.claim(worker, models, lease)
    assert task is not None, f"{worker} found nothing to claim in {models}"
    return task


def status_of(store: SqlStores, task_id: str) -> TaskStatus:
    task = store.tasks.get_task(task_id)
    assert task is not None
    return task.status


# -- schema ---------------------------------------------------------------------------------


def test_processes_starting_together_all_create_the_schema(store_url: str) -> None:
    # API replicas and workers starting at once on a fresh database all run init_schema.
    databases = [Database(store_url) for _ in range(6)]
    start = threading.Barrier(len(databases))
    errors: list[BaseException] = []

    def init(db: Database) -> None:
        try:
            start.wait()
            init_schema(db)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=init, args=(d,)) for d in databases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert errors == []
    store = SqlStores.open(store_url)
    try:
        init_schema(store.db)  # and again later: idempotent
        task = add_task(store)
        assert store.tasks.get_task(task.id) == task
    finally:
        store.close()


# -- insert / get ----------------------------------------------------------------------------


def test_inserted_task_is_pending_with_its_params(store: SqlStores) -> None:
    before = store.db.now()
    task = add_task(store, model="qwen-image", key="key-a", max_attempts=5, workspace="ws-1")

    stored = store.tasks.get_task(task.id)
    assert stored == task
    assert stored.status is TaskStatus.PENDING
    assert stored.params == PARAMS
    assert (stored.model, stored.api_key_id, stored.workspace) == ("qwen-image", "key-a", "ws-1")
    assert (stored.attempts, stored.max_attempts, stored.progress_total) == (0, 5, PARAMS.steps)
    assert stored.worker_id is None and stored.lease_until is None
    assert stored.started_at is None and stored.finished_at is None
    assert before <= stored.created_at <= store.db.now()


def test_get_task_with_another_key_is_none(store: SqlStores) -> None:
    task = add_task(store, key="key-a")

    assert store.tasks.get_task(task.id, "key-a") == task
    assert store.tasks.get_task(task.id, "key-b") is None
    assert store.tasks.get_task(task.id) == task
    assert store.tasks.get_task(str(uuid.uuid4())) is None


# -- claim ----------------------------------------------------------------------------------


def test_claim_takes_the_oldest_pending_task_of_the_workers_models(store: SqlStores) -> None:
    wan_1 = add_task(store, model="wan")
    qwen_1 = add_task(store, model="qwen")
    qwen_2 = add_task(store, model="qwen")
    wan_2 = add_task(store, model="wan")
    add_task(store, model="sd")

    assert claimed(store, "w", ["qwen"]).id == qwen_1.id
    assert claimed(store, "w", ["qwen", "wan"]).id == wan_1.id
    assert claimed(store, "w", ["wan"]).id == wan_2.id
    assert claimed(store, "w", ["wan", "qwen"]).id == qwen_2.id
    assert store.queue.claim("w", ["wan", "qwen"], LONG_LEASE) is None
    assert store.queue.claim("w", ["flux"], LONG_LEASE) is None
    assert store.queue.claim("w", [], LONG_LEASE) is None


def test_claim_leases_the_task_to_the_worker(store: SqlStores) -> None:
    task = add_task(store)
    before = store.db.now()

    got = claimed(store, "worker-1", ["wanx-v1"], lease=LONG_LEASE)

    assert got.id == task.id
    assert got == store.tasks.get_task(task.id)
    assert got.status is TaskStatus.RUNNING
    assert (got.worker_id, got.attempts) == ("worker-1", 1)
    assert got.lease_until is not None
    assert before + LONG_LEASE <= got.lease_until <= store.db.now() + LONG_LEASE
    assert got.started_at is not None and before <= got.started_at <= store.db.now()


def test_two_workers_never_claim_the_same_task(make_store: Callable[[], SqlStores]) -> None:
    first, second = make_store(), make_store()
    ids = {add_task(first).id for _ in range(4)}

    taken = []
    for _ in range(2):
        taken.append(claimed(first, "w1", ["wanx-v1"]))
        taken.append(claimed(second, "w2", ["wanx-v1"]))

    assert first.queue.claim("w1", ["wanx-v1"], LONG_LEASE) is None
    assert second.queue.claim("w2", ["wanx-v1"], LONG_LEASE) is None
    assert sorted(t.id for t in taken) == sorted(ids)
    for task in taken:
        assert first.tasks.get_task(task.id).worker_id == task.worker_id


def test_concurrent_claims_take_each_task_exactly_once(store: SqlStores) -> None:
    threads_n, tasks_n = 8, 60
    ids = [add_task(store).id for _ in range(tasks_n)]
    start = threading.Barrier(threads_n)
    claims: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(worker: str) -> None:
        mine = claims.setdefault(worker, [])
        try:
            start.wait()
            while (task := store.queue.claim(worker, ["wanx-v1"], LONG_LEASE)) is not None:
                mine.append(task.id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()  # this thread's connection

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors
    all_claims = [task_id for mine in claims.values() for task_id in mine]
    assert sorted(all_claims) == sorted(ids)  # each task once: none lost, none twice
    for worker, mine in claims.items():
        for task_id in mine:
            task = store.tasks.get_task(task_id)
            assert (task.status, task.worker_id, task.attempts) == (TaskStatus.RUNNING, worker, 1)


# -- finish ---------------------------------------------------------------------------------


def test_finish_records_the_outcome_once(store: SqlStores) -> None:
    add_task(store)
    task = claimed(store, "w", ["wanx-v1"])
    results = [
        ImageResult(blob_key=f"{task.id}/1/0.png", actual_prompt="a fox"),
        ImageResult(code="DataInspectionFailed", message="rejected"),
    ]

    assert store.queue.finish(task.id, "w", 1, TaskStatus.SUCCEEDED, results)

    done = store.tasks.get_task(task.id)
    assert done.status is TaskStatus.SUCCEEDED
    assert done.results == results
    assert done.progress_step == done.progress_total == PARAMS.steps
    assert done.lease_until is None
    assert done.finished_at is not None and done.finished_at >= done.started_at
    # Final is final: a second finish (or any other) changes nothing.
    assert not store.queue.finish(task.id, "w", 1, TaskStatus.FAILED, error_code="X")
    assert store.tasks.get_task(task.id) == done


def test_finish_as_failed_keeps_the_error(store: SqlStores) -> None:
    add_task(store)
    task = claimed(store, "w", ["wanx-v1"])
    assert store.queue.set_progress(task.id, "w", 1, 2)

    assert store.queue.finish(
        task.id, "w", 1, TaskStatus.FAILED, error_code="InternalError.Algo", error_message="boom"
    )

    done = store.tasks.get_task(task.id)
    assert done.status is TaskStatus.FAILED
    assert (done.error_code, done.error_message) == ("InternalError.Algo", "boom")
    assert done.progress_step == 2
    assert done.results == []


def test_finish_is_fenced_by_worker_and_attempt(store: SqlStores) -> None:
    add_task(store)
    task = claimed(store, "w1", ["wanx-v1"])

    assert not store.queue.finish(task.id, "w2", 1, TaskStatus.SUCCEEDED)
    assert not store.queue.finish(task.id, "w1", 2, TaskStatus.SUCCEEDED)
    assert not store.queue.set_progress(task.id, "w2", 1, 3)
    assert status_of(store, task.id) is TaskStatus.RUNNING
    assert store.queue.finish(task.id, "w1", 1, TaskStatus.SUCCEEDED)


def test_worker_whose_lease_was_reaped_cannot_finish(store: SqlStores) -> None:
    add_task(store)
    lost = claimed(store, "w1", ["wanx-v1"], lease=SHORT_LEASE)
    time.sleep(EXPIRE)
    assert store.queue.reap_expired_leases() == [(lost.id, TaskStatus.PENDING)]
    rerun = claimed(store, "w2", ["wanx-v1"])
    assert (rerun.id, rerun.attempts) == (lost.id, 2)

    old = ImageResult(blob_key=f"{lost.id}/1/0.png")
    new = ImageResult(blob_key=f"{lost.id}/2/0.png")
    assert not store.queue.set_progress(lost.id, "w1", 1, 3)
    assert not store.queue.finish(lost.id, "w1", 1, TaskStatus.SUCCEEDED, [old])
    assert not store.queue.finish(lost.id, "w1", 2, TaskStatus.SUCCEEDED, [old])
    assert store.queue.finish(lost.id, "w2", 2, TaskStatus.SUCCEEDED, [new])

    done = store.tasks.get_task(lost.id)
    assert (done.status, done.results, done.attempts) == (TaskStatus.SUCCEEDED, [new], 2)


def test_same_worker_cannot_finish_an_earlier_attempt(store: SqlStores) -> None:
    add_task(store)
    first = claimed(store, "w", ["wanx-v1"], lease=SHORT_LEASE)
    time.sleep(EXPIRE)
    store.queue.reap_expired_leases()
    second = claimed(store, "w", ["wanx-v1"])
    assert second.attempts == 2

    assert not store.queue.finish(first.id, "w", first.attempts, TaskStatus.SUCCEEDED)
    assert store.queue.finish(first.id, "w", second.attempts, TaskStatus.SUCCEEDED)


# -- reaper ---------------------------------------------------------------------------------


def test_reaper_requeues_an_expired_lease_and_leaves_live_ones(store: SqlStores) -> None:
    expired = add_task(store)
    live = add_task(store)
    claimed(store, "w1", ["wanx-v1"], lease=SHORT_LEASE)
    claimed(store, "w2", ["wanx-v1"], lease=LONG_LEASE)
    time.sleep(EXPIRE)

    assert store.queue.reap_expired_leases() == [(expired.id, TaskStatus.PENDING)]
    assert store.queue.reap_expired_leases() == []  # idempotent

    requeued = store.tasks.get_task(expired.id)
    assert requeued.status is TaskStatus.PENDING
    assert (requeued.worker_id, requeued.lease_until, requeued.attempts) == (None, None, 1)
    assert (requeued.error_code, requeued.finished_at) == (None, None)
    assert status_of(store, live.id) is TaskStatus.RUNNING
    # Back in the queue, at its old place.
    later = add_task(store)
    assert claimed(store, "w3", ["wanx-v1"]).id == expired.id
    assert store.tasks.get_task(later.id).status is TaskStatus.PENDING


def test_reaper_fails_a_task_after_max_attempts(store: SqlStores) -> None:
    task = add_task(store, max_attempts=2)

    for attempt, outcome in ((1, TaskStatus.PENDING), (2, TaskStatus.FAILED)):
        assert claimed(store, f"w{attempt}", ["wanx-v1"], lease=SHORT_LEASE).attempts == attempt
        time.sleep(EXPIRE)
        assert store.queue.reap_expired_leases() == [(task.id, outcome)]

    failed = store.tasks.get_task(task.id)
    assert failed.status is TaskStatus.FAILED
    assert failed.error_code == "InternalError.WorkerLost"
    assert failed.error_message
    assert failed.finished_at is not None and failed.worker_id is None
    assert store.queue.claim("w3", ["wanx-v1"], LONG_LEASE) is None


def test_reaper_cancels_an_expired_task_whose_cancel_was_requested(store: SqlStores) -> None:
    task = add_task(store, max_attempts=3)
    claimed(store, "w", ["wanx-v1"], lease=SHORT_LEASE)
    assert store.tasks.request_cancel(task.id) is TaskStatus.RUNNING
    time.sleep(EXPIRE)

    assert store.queue.reap_expired_leases() == [(task.id, TaskStatus.CANCELED)]

    canceled = store.tasks.get_task(task.id)
    assert canceled.status is TaskStatus.CANCELED
    assert (canceled.error_code, canceled.error_message) == (None, None)
    assert canceled.finished_at is not None
    assert store.queue.claim("w", ["wanx-v1"], LONG_LEASE) is None


# -- heartbeat ------------------------------------------------------------------------------


def test_heartbeat_extends_only_this_workers_leases(store: SqlStores) -> None:
    kept = add_task(store)
    lost = add_task(store)
    claimed(store, "w1", ["wanx-v1"], lease=SHORT_LEASE)
    claimed(store, "w2", ["wanx-v1"], lease=SHORT_LEASE)

    assert store.queue.heartbeat("w1", LONG_LEASE) == set()
    time.sleep(EXPIRE)

    assert store.queue.reap_expired_leases() == [(lost.id, TaskStatus.PENDING)]
    alive = store.tasks.get_task(kept.id)
    assert alive.status is TaskStatus.RUNNING and alive.worker_id == "w1"
    assert alive.lease_until is not None and alive.lease_until > store.db.now() + LONG_LEASE - 5
    assert store.queue.finish(kept.id, "w1", 1, TaskStatus.SUCCEEDED)


def test_heartbeat_reports_cancel_requests(store: SqlStores) -> None:
    first, second = add_task(store), add_task(store)
    claimed(store, "w", ["wanx-v1"])
    claimed(store, "w", ["wanx-v1"])

    assert store.queue.heartbeat("w", LONG_LEASE) == set()
    assert store.tasks.request_cancel(first.id) is TaskStatus.RUNNING
    assert store.tasks.get_task(first.id).cancel_requested
    assert store.queue.heartbeat("w", LONG_LEASE) == {first.id}
    assert store.queue.heartbeat("other", LONG_LEASE) == set()

    # A finished task is no longer this worker's: no lease to extend, nothing to report.
    assert store.queue.finish(first.id, "w", 1, TaskStatus.CANCELED)
    assert store.queue.heartbeat("w", LONG_LEASE) == set()
    assert store.tasks.get_task(first.id).lease_until is None
    assert status_of(store, second.id) is TaskStatus.RUNNING


# -- release --------------------------------------------------------------------------------


def test_release_hands_the_task_back_without_counting_the_attempt(store: SqlStores) -> None:
    task = add_task(store)
    add_task(store)
    claimed(store, "w", ["wanx-v1"])
    assert store.queue.set_progress(task.id, "w", 1, 3)

    assert not store.queue.release(task.id, "other", 1)
    assert not store.queue.release(task.id, "w", 2)
    assert store.queue.release(task.id, "w", 1)
    assert not store.queue.release(task.id, "w", 1)

    back = store.tasks.get_task(task.id)
    assert back.status is TaskStatus.PENDING
    assert (back.attempts, back.worker_id, back.lease_until, back.progress_step) == (
        0,
        None,
        None,
        0,
    )
    # It keeps its place at the head of the queue, and the next claim is attempt 1 again.
    again = claimed(store, "w2", ["wanx-v1"])
    assert (again.id, again.attempts) == (task.id, 1)


def test_release_of_a_finished_task_is_refused(store: SqlStores) -> None:
    task = add_task(store)
    claimed(store, "w", ["wanx-v1"])
    assert store.queue.finish(task.id, "w", 1, TaskStatus.SUCCEEDED)

    assert not store.queue.release(task.id, "w", 1)
    assert status_of(store, task.id) is TaskStatus.SUCCEEDED


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_pending_by_its_owner(store: SqlStores) -> None:
    task = add_task(store, key="key-a")

    assert not store.tasks.cancel_pending(task.id, "key-b")
    assert status_of(store, task.id) is TaskStatus.PENDING
    assert store.tasks.cancel_pending(task.id, "key-a")
    assert not store.tasks.cancel_pending(task.id, "key-a")

    canceled = store.tasks.get_task(task.id)
    assert canceled.status is TaskStatus.CANCELED
    assert canceled.finished_at is not None
    assert store.queue.claim("w", ["wanx-v1"], LONG_LEASE) is None


def test_cancel_pending_refuses_running_and_finished_tasks(store: SqlStores) -> None:
    running = add_task(store, key="key-a")
    finished = add_task(store, key="key-a")
    claimed(store, "w", ["wanx-v1"])
    claimed(store, "w", ["wanx-v1"])
    assert store.queue.finish(finished.id, "w", 1, TaskStatus.SUCCEEDED)

    assert not store.tasks.cancel_pending(running.id, "key-a")
    assert not store.tasks.cancel_pending(finished.id, "key-a")
    assert not store.tasks.cancel_pending(str(uuid.uuid4()), "key-a")
    assert status_of(store, running.id) is TaskStatus.RUNNING
    assert not store.tasks.get_task(running.id).cancel_requested
    assert status_of(store, finished.id) is TaskStatus.SUCCEEDED


def test_request_cancel_by_status(store: SqlStores) -> None:
    running = add_task(store)
    finished = add_task(store)
    pending = add_task(store)
    claimed(store, "w", ["wanx-v1"])
    claimed(store, "w", ["wanx-v1"])
    assert store.queue.finish(finished.id, "w", 1, TaskStatus.SUCCEEDED)

    assert store.tasks.request_cancel(pending.id) is TaskStatus.CANCELED
    assert store.tasks.get_task(pending.id).finished_at is not None
    assert store.tasks.request_cancel(running.id) is TaskStatus.RUNNING
    assert store.tasks.get_task(running.id).cancel_requested
    assert store.tasks.request_cancel(finished.id) is TaskStatus.SUCCEEDED
    assert not store.tasks.get_task(finished.id).cancel_requested
    assert store.tasks.request_cancel(str(uuid.uuid4())) is None


# -- list -----------------------------------------------------------------------------------


@pytest.fixture
def listed(store: SqlStores) -> dict[str, Task]:
    """Four tasks of key-a (oldest first) and one of key-b, with distinct creation times."""
    tasks: dict[str, Task] = {}
    for name, model, key, workspace in (
        ("qwen_old", "qwen-image", "key-a", None),
        ("wan", "wanx-v1", "key-a", None),
        ("qwen_ws", "qwen-image", "key-a", "ws-1"),
        ("other_key", "qwen-image", "key-b", None),
        ("qwen_new", "qwen-image", "key-a", None),
    ):
        tasks[name] = add_task(store, model=model, key=key, workspace=workspace)
        time.sleep(0.003)  # SQLite's clock ticks in milliseconds
    claimed(store, "w", ["wanx-v1"])
    assert store.queue.finish(tasks["wan"].id, "w", 1, TaskStatus.SUCCEEDED)
    created = [t.created_at for t in tasks.values()]
    assert created == sorted(set(created))
    return tasks


def names(tasks: dict[str, Task], got: list[Task]) -> list[str]:
    by_id = {t.id: name for name, t in tasks.items()}
    return [by_id[t.id] for t in got]


EVERYTHING = TaskFilter(start=0.0, end=4e9)


def test_list_tasks_shows_only_the_keys_tasks_newest_first(
    store: SqlStores, listed: dict[str, Task]
) -> None:
    total, got = store.tasks.list_tasks("key-a", EVERYTHING, 0, 10)

    assert total == 4
    assert names(listed, got) == ["qwen_new", "qwen_ws", "wan", "qwen_old"]
    assert got[2].status is TaskStatus.SUCCEEDED
    assert store.tasks.list_tasks("key-c", EVERYTHING, 0, 10) == (0, [])


def test_list_tasks_pages(store: SqlStores, listed: dict[str, Task]) -> None:
    pages = [store.tasks.list_tasks("key-a", EVERYTHING, offset, 3) for offset in (0, 3, 6)]

    assert [total for total, _ in pages] == [4, 4, 4]
    assert [names(listed, page) for _, page in pages] == [
        ["qwen_new", "qwen_ws", "wan"],
        ["qwen_old"],
        [],
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": "qwen-image"}, ["qwen_new", "qwen_ws", "qwen_old"]),
        ({"model": "wanx-v1"}, ["wan"]),
        ({"model": "nope"}, []),
        ({"status": TaskStatus.SUCCEEDED}, ["wan"]),
        ({"status": TaskStatus.PENDING}, ["qwen_new", "qwen_ws", "qwen_old"]),
        ({"status": TaskStatus.RUNNING}, []),
        ({"workspace": "ws-1"}, ["qwen_ws"]),
        ({"model": "qwen-image", "status": TaskStatus.SUCCEEDED}, []),
    ],
)
def test_list_tasks_filters(
    store: SqlStores, listed: dict[str, Task], changes: dict[str, Any], expected: list[str]
) -> None:
    flt = dataclasses.replace(EVERYTHING, **changes)

    total, got = store.tasks.list_tasks("key-a", flt, 0, 10)

    assert (total, names(listed, got)) == (len(expected), expected)


def test_list_tasks_by_id_only_finds_the_keys_own(
    store: SqlStores, listed: dict[str, Task]
) -> None:
    mine = TaskFilter(start=0.0, end=4e9, task_id=listed["wan"].id)
    theirs = TaskFilter(start=0.0, end=4e9, task_id=listed["other_key"].id)

    assert names(listed, store.tasks.list_tasks("key-a", mine, 0, 10)[1]) == ["wan"]
    assert store.tasks.list_tasks("key-a", theirs, 0, 10) == (0, [])


def test_list_tasks_window_is_inclusive(store: SqlStores, listed: dict[str, Task]) -> None:
    wan, qwen_ws = listed["wan"].created_at, listed["qwen_ws"].created_at

    def window(start: float, end: float) -> tuple[int, list[str]]:
        total, got = store.tasks.list_tasks("key-a", TaskFilter(start=start, end=end), 0, 10)
        return total, names(listed, got)

    assert window(wan, qwen_ws) == (2, ["qwen_ws", "wan"])
    assert window(wan, wan) == (1, ["wan"])
    assert window(listed["qwen_new"].created_at + 1, 4e9) == (0, [])
    assert window(0.0, listed["qwen_old"].created_at - 1) == (0, [])


# -- retention ------------------------------------------------------------------------------


def test_expired_task_ids_only_take_finished_tasks_past_retention(store: SqlStores) -> None:
    succeeded, failed, running, canceled, pending = (add_task(store) for _ in range(5))
    for _ in range(3):
        claimed(store, "w", ["wanx-v1"])
    assert store.queue.finish(succeeded.id, "w", 1, TaskStatus.SUCCEEDED)
    assert store.queue.finish(failed.id, "w", 1, TaskStatus.FAILED, error_code="X")
    assert store.tasks.cancel_pending(canceled.id, "key-a")
    time.sleep(0.01)

    finished = {succeeded.id, failed.id, canceled.id}
    assert set(store.tasks.expired_task_ids(0.0)) == finished
    assert store.tasks.expired_task_ids(3600.0) == []
    assert len(store.tasks.expired_task_ids(0.0, limit=2)) == 2
    assert pending.id not in finished and running.id not in finished


def test_retention_counts_from_the_finish_not_the_creation(store: SqlStores) -> None:
    old = add_task(store)
    time.sleep(0.2)
    assert store.tasks.cancel_pending(old.id, "key-a")

    # Created 0.2 s ago, but finished just now: not yet past a 0.1 s retention.
    assert store.tasks.expired_task_ids(0.1) == []
    time.sleep(0.12)
    assert store.tasks.expired_task_ids(0.1) == [old.id]


def test_delete_tasks_forgets_them(store: SqlStores) -> None:
    gone, kept = add_task(store), add_task(store)
    store.tasks.cancel_pending(gone.id, "key-a")
    store.tasks.cancel_pending(kept.id, "key-a")

    assert store.tasks.delete_tasks([gone.id, str(uuid.uuid4())]) == 1
    assert store.tasks.get_task(gone.id) is None
    assert store.tasks.get_task(kept.id) is not None
    assert store.tasks.delete_tasks([]) == 0


# -- API keys -------------------------------------------------------------------------------


def _integrity_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [sqlite3.IntegrityError]
    try:
        import psycopg
    except ImportError:
        pass
    else:
        errors.append(psycopg.IntegrityError)
    return tuple(errors)


def test_keys_insert_find_touch_list(store: SqlStores) -> None:
    first = store.keys.insert_key("id-1", "ci", "sk-abcd", hash_key("sk-abcd-secret"))
    second = store.keys.insert_key("id-2", "laptop", "sk-ef01", hash_key("sk-ef01-secret"))

    assert (first.id, first.name, first.prefix) == ("id-1", "ci", "sk-abcd")
    assert first.last_used_at is None and first.revoked_at is None
    assert store.keys.find_key(hash_key("sk-abcd-secret")) == first
    assert store.keys.find_key(hash_key("sk-ef01-secret")) == second
    assert store.keys.find_key(hash_key("sk-nope")) is None
    assert [k.id for k in store.keys.list_keys()] == ["id-1", "id-2"]

    store.keys.touch_key("id-1", min_interval=60)
    touched = store.keys.find_key(hash_key("sk-abcd-secret"))
    assert touched is not None and touched.last_used_at is not None
    assert touched.last_used_at >= first.created_at
    # Within the interval a second use is not written again.
    store.keys.touch_key("id-1", min_interval=60)
    again = store.keys.find_key(hash_key("sk-abcd-secret"))
    assert again is not None and again.last_used_at == touched.last_used_at


def test_keys_secret_hash_is_unique(store: SqlStores) -> None:
    store.keys.insert_key("id-1", "a", "sk-abcd", hash_key("same"))

    with pytest.raises(_integrity_errors()):
        store.keys.insert_key("id-2", "b", "sk-abcd", hash_key("same"))


def test_key_service_authenticates_bearer_keys(store: SqlStores) -> None:
    keys = KeyService(store.keys)
    key, secret = keys.create("ci")

    assert secret.startswith("sk-") and len(secret) == 3 + 48
    assert key.prefix == secret[:7]
    assert store.keys.find_key(secret) is None  # only the hash is stored
    assert keys.authenticate(f"Bearer {secret}").id == key.id
    assert keys.authenticate(f"bearer  {secret} ").id == key.id
    with pytest.raises(MissingApiKey):
        keys.authenticate(None)
    with pytest.raises(MissingApiKey):
        keys.authenticate("")
    for bad in (secret, f"Basic {secret}", "Bearer ", f"Bearer {secret}x", "Bearer sk-other"):
        with pytest.raises(InvalidApiKey):
            keys.authenticate(bad)


def test_a_task_waiting_for_its_prompt_rewrite_is_not_claimed(store: SqlStores) -> None:
    task = add_task(store, task_id="t", rewrite_prompt=True)
    assert not task.prompt_ready
    assert store.queue.claim("w", ["wanx-v1"], LONG_LEASE) is None

    leased = store.prompts.claim_prompt(lease_seconds=SHORT_LEASE)
    assert leased is not None and leased.id == "t"
    assert store.prompts.claim_prompt(lease_seconds=LONG_LEASE) is None  # leased to the first
    time.sleep(EXPIRE)
    again = store.prompts.claim_prompt(lease_seconds=LONG_LEASE)  # its rewriter died: taken again
    assert again is not None and again.id == "t"

    assert store.prompts.set_actual_prompt("t", "a red fox, snowfall, dusk light", note=None)
    assert not store.prompts.set_actual_prompt("t", "twice", note=None)
    assert store.prompts.claim_prompt(lease_seconds=LONG_LEASE) is None
    running = claimed(store, "w", ["wanx-v1"])
    assert running.effective_prompt == "a red fox, snowfall, dusk light"
    assert running.params.prompt == PARAMS.prompt


def test_a_cancelled_task_is_not_rewritten(store: SqlStores) -> None:
    add_task(store, task_id="t", rewrite_prompt=True)
    assert store.tasks.cancel_pending("t", "key-a")
    assert store.prompts.claim_prompt(lease_seconds=LONG_LEASE) is None
