"""The workers table (db/workers.py) on both backends: beats, the live window, a clean stop."""

from __future__ import annotations

import time

from imagesynth.db import SqlStores
from imagesynth.domain import TaskStatus
from imagesynth.tasks.models import ImageResult
from tests.unit.test_store import add_task, claimed


def test_beats_count_per_model_within_the_window(store: SqlStores) -> None:
    workers = store.workers
    workers.beat("w1", ["a", "b"])
    workers.beat("w2", ["b"])
    workers.beat("w2", ["b"])  # a second beat updates, never duplicates
    assert workers.live_workers(60) == {"a": 1, "b": 2}
    assert workers.worker_count(60) == 2
    time.sleep(0.3)
    workers.beat("w1", ["a"])  # models as the latest beat says
    assert workers.live_workers(0.2) == {"a": 1}  # w2 is older than the window


def test_a_worker_that_leaves_is_not_live(store: SqlStores) -> None:
    store.workers.beat("w1", ["a"])
    store.workers.leave("w1")
    assert store.workers.live_workers(3600) == {}
    store.workers.ping()  # the database answers


def test_workers_seen_lists_each_live_worker_with_its_models(store: SqlStores) -> None:
    store.workers.beat("w1", ["a", "b"])
    time.sleep(0.3)
    store.workers.beat("w2", ["b"])
    seen = store.workers.workers_seen(60)
    assert [(w.worker_id, w.models) for w in seen] == [("w2", ("b",)), ("w1", ("a", "b"))]
    assert 0 <= seen[0].seconds_ago < seen[1].seconds_ago < 60
    assert [w.worker_id for w in store.workers.workers_seen(0.2)] == ["w2"]


def test_recent_failures_are_failed_tasks_of_every_key_newest_first(store: SqlStores) -> None:
    ended = []
    for key, code in (("key-a", "InternalError.Timeout"), ("key-b", "DataInspectionFailed")):
        add_task(store, key=key)
        task = claimed(store, "w", ["wanx-v1"])
        failed = [ImageResult(code=code, message="no image")]
        assert store.queue.finish(
            task.id, "w", task.attempts, TaskStatus.FAILED, failed, code, f"{code} message"
        )
        ended.append(task.id)
        time.sleep(0.01)
    add_task(store)  # still PENDING: not a failure
    done = claimed(store, "w", ["wanx-v1"])
    assert store.queue.finish(done.id, "w", done.attempts, TaskStatus.SUCCEEDED, [], None, None)
    failures = store.workers.recent_failures(10)
    assert [f.task_id for f in failures] == ended[::-1]
    assert [(f.api_key_id, f.code) for f in failures] == [
        ("key-b", "DataInspectionFailed"),
        ("key-a", "InternalError.Timeout"),
    ]
    assert failures[0].message == "DataInspectionFailed message"
    assert failures[0].finished_at is not None and failures[0].finished_at >= failures[0].created_at
    assert len(store.workers.recent_failures(1)) == 1
