"""Maintenance.run_once: reap lost leases, forget expired tasks together with their files."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagesynth.db import SqlStores
from imagesynth.db.schema import init_schema
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.storage.local import LocalBlobStore
from imagesynth.tasks.maintenance import Maintenance
from imagesynth.tasks.models import ImageResult, Task

MODEL = "wanx-v1"
PARAMS = GenerationParams(
    prompt="a lighthouse",
    negative_prompt="",
    width=1024,
    height=1024,
    n=1,
    seed=1,
    steps=4,
    guidance=7.5,
    prompt_extend=True,
    watermark=False,
)
SHORT_LEASE = 0.05
LONG_LEASE = 30.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStores]:
    store = SqlStores.open(f"sqlite:///{tmp_path / 'imagesynth.db'}")
    init_schema(store.db)
    yield store
    store.close()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "files")


@pytest.fixture
def make_task(store: SqlStores, blobs: LocalBlobStore) -> Callable[..., Task]:
    """A task brought to `status`, with one image file per attempt it ran."""

    def make(status: TaskStatus, *, lease: float = LONG_LEASE, max_attempts: int = 3) -> Task:
        task = store.tasks.insert_task(
            task_id=str(uuid.uuid4()),
            api_key_id="key-a",
            model=MODEL,
            params=PARAMS,
            request_id=str(uuid.uuid4()),
            workspace=None,
            max_attempts=max_attempts,
        )
        if status is TaskStatus.CANCELED:
            assert store.tasks.cancel_pending(task.id, "key-a")
        elif status is not TaskStatus.PENDING:
            running = store.queue.claim("w", [MODEL], lease)
            assert running is not None and running.id == task.id
            key = f"{task.id}/{running.attempts}/0.png"
            blobs.put(key, b"\x89PNG")
            if status.is_final:
                assert store.queue.finish(
                    task.id, "w", running.attempts, status, [ImageResult(blob_key=key)]
                )
        stored = store.tasks.get_task(task.id)
        assert stored is not None and stored.status is status
        return stored

    return make


def files_of(blobs: LocalBlobStore, task: Task) -> list[str]:
    folder = blobs.root / task.id
    return sorted(str(p.relative_to(blobs.root)) for p in folder.rglob("*") if p.is_file())


def test_run_once_deletes_expired_tasks_with_their_files(
    store: SqlStores, blobs: LocalBlobStore, make_task: Callable[..., Task]
) -> None:
    succeeded = make_task(TaskStatus.SUCCEEDED)
    failed = make_task(TaskStatus.FAILED)
    canceled = make_task(TaskStatus.CANCELED)
    running = make_task(TaskStatus.RUNNING)
    pending = make_task(TaskStatus.PENDING)
    assert files_of(blobs, succeeded) == [f"{succeeded.id}/1/0.png"]
    time.sleep(0.01)  # past a retention of 0 s on SQLite's millisecond clock

    Maintenance(store.queue, store.tasks, blobs, retention_seconds=0.0).run_once()

    for gone in (succeeded, failed, canceled):
        assert store.tasks.get_task(gone.id) is None
        assert not (blobs.root / gone.id).exists()
    assert store.tasks.get_task(running.id).status is TaskStatus.RUNNING
    assert files_of(blobs, running) == [f"{running.id}/1/0.png"]
    assert store.tasks.get_task(pending.id).status is TaskStatus.PENDING


def test_run_once_keeps_finished_tasks_within_retention(
    store: SqlStores, blobs: LocalBlobStore, make_task: Callable[..., Task]
) -> None:
    task = make_task(TaskStatus.SUCCEEDED)

    Maintenance(store.queue, store.tasks, blobs, retention_seconds=3600.0).run_once()

    assert store.tasks.get_task(task.id) == task
    assert files_of(blobs, task) == [f"{task.id}/1/0.png"]


def test_run_once_requeues_a_lost_lease_and_keeps_it(
    store: SqlStores, blobs: LocalBlobStore, make_task: Callable[..., Task]
) -> None:
    lost = make_task(TaskStatus.RUNNING, lease=SHORT_LEASE)
    time.sleep(SHORT_LEASE * 2)

    Maintenance(store.queue, store.tasks, blobs, retention_seconds=0.0).run_once()

    requeued = store.tasks.get_task(lost.id)
    assert requeued.status is TaskStatus.PENDING
    assert requeued.worker_id is None
    assert store.queue.claim("w2", [MODEL], LONG_LEASE).attempts == 2


def test_run_once_fails_a_task_that_used_its_attempts_then_forgets_it(
    store: SqlStores, blobs: LocalBlobStore, make_task: Callable[..., Task]
) -> None:
    lost = make_task(TaskStatus.RUNNING, lease=SHORT_LEASE, max_attempts=1)
    time.sleep(SHORT_LEASE * 2)
    maintenance = Maintenance(store.queue, store.tasks, blobs, retention_seconds=0.2)

    maintenance.run_once()

    failed = store.tasks.get_task(lost.id)
    assert failed.status is TaskStatus.FAILED
    assert failed.error_code == "InternalError.WorkerLost"
    assert files_of(blobs, lost) == [f"{lost.id}/1/0.png"]

    time.sleep(0.25)
    maintenance.run_once()

    assert store.tasks.get_task(lost.id) is None
    assert not (blobs.root / lost.id).exists()


def test_run_once_forgets_more_than_one_batch(
    store: SqlStores, blobs: LocalBlobStore, make_task: Callable[..., Task]
) -> None:
    # expired_task_ids() hands out 500 at a time; one pass must still take them all.
    tasks = [make_task(TaskStatus.CANCELED) for _ in range(520)]
    time.sleep(0.01)

    Maintenance(store.queue, store.tasks, blobs, retention_seconds=0.0).run_once()

    assert store.tasks.expired_task_ids(0.0) == []
    assert all(store.tasks.get_task(t.id) is None for t in tasks[::50])


def test_run_once_is_idempotent(
    store: SqlStores, blobs: LocalBlobStore, make_task: Callable[..., Task]
) -> None:
    done = make_task(TaskStatus.SUCCEEDED)
    kept = make_task(TaskStatus.RUNNING)
    time.sleep(0.01)
    maintenance = Maintenance(store.queue, store.tasks, blobs, retention_seconds=0.0)

    maintenance.run_once()
    maintenance.run_once()

    assert store.tasks.get_task(done.id) is None
    assert store.tasks.get_task(kept.id) == kept
    assert files_of(blobs, kept) == [f"{kept.id}/1/0.png"]
