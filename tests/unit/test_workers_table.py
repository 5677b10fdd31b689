"""The workers table (db/workers.py) on both backends: beats, the live window, a clean stop."""

from __future__ import annotations

import time

from imagesynth.db import SqlStores


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
