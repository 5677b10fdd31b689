"""Limits, fair turns and billing in the store, against SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imagesynth.accounts.models import KeyStanding, TaskTerms
from imagesynth.db import SqlStores
from imagesynth.db.schema import init_schema
from imagesynth.domain import TaskStatus
from imagesynth.errors import AllocationQuotaExceeded
from imagesynth.tasks.models import ImageResult
from tests.unit.test_store import add_task, claimed

PRICE = 140_000  # 0.14 in micros


def ok(n: int) -> list[ImageResult]:
    return [ImageResult(blob_key=f"k/{i}.png") for i in range(n)]


def run_to_end(store: SqlStores, worker: str, status: TaskStatus, results: list[ImageResult]):
    task = claimed(store, worker, ["wanx-v1"])
    assert store.queue.finish(task.id, worker, task.attempts, status, results)
    return task


def test_in_flight_limit_holds_a_keys_tasks_pending(store: SqlStores) -> None:
    limited = TaskTerms(in_flight=2)
    a = [add_task(store, key="a", terms=limited) for _ in range(3)]
    b = add_task(store, key="b", terms=limited)

    first, second = claimed(store, "w1", ["wanx-v1"]), claimed(store, "w2", ["wanx-v1"])
    third = claimed(store, "w3", ["wanx-v1"])
    # Key a has 2 running: its third task waits, and key b's task goes instead.
    assert {first.id, second.id, third.id} == {a[0].id, b.id, a[1].id}
    assert store.queue.claim("w4", ["wanx-v1"], 30) is None
    store.queue.finish(first.id, "w1", first.attempts, TaskStatus.SUCCEEDED, ok(1))
    assert claimed(store, "w4", ["wanx-v1"]).id == a[2].id


def test_keys_take_turns_so_a_flood_does_not_starve_others(store: SqlStores) -> None:
    flood = [add_task(store, key="a") for _ in range(6)]
    late = add_task(store, key="b")

    order = [claimed(store, f"w{i}", ["wanx-v1"]).id for i in range(7)]
    # a's first task is older, then b's only task, then the rest of a's queue in order.
    assert order == [flood[0].id, late.id, *(t.id for t in flood[1:])]


def test_keys_take_turns_with_one_worker_finishing_each_task(store: SqlStores) -> None:
    a = [add_task(store, key="a") for _ in range(3)]
    b = [add_task(store, key="b") for _ in range(2)]

    order = []
    for _ in range(5):
        task = claimed(store, "w", ["wanx-v1"])
        store.queue.finish(task.id, "w", task.attempts, TaskStatus.SUCCEEDED, ok(1))
        order.append(task.id)
    assert order == [a[0].id, b[0].id, a[1].id, b[1].id, a[2].id]


def test_free_images_first_then_price_and_failures_cost_nothing(store: SqlStores) -> None:
    terms = TaskTerms(in_flight=10, price_micros=PRICE, free_quota=3, free_until=time.time() + 60)
    for _ in range(4):
        add_task(store, key="a", terms=terms)  # n = 2 each
    first = run_to_end(store, "w", TaskStatus.SUCCEEDED, ok(2))
    second = run_to_end(store, "w", TaskStatus.SUCCEEDED, ok(2))
    failed = run_to_end(store, "w", TaskStatus.FAILED, [])
    partial = run_to_end(
        store, "w", TaskStatus.SUCCEEDED, [*ok(1), ImageResult(code="DataInspectionFailed")]
    )

    ledger = {e.task_id: e for e in store.ledger.entries(api_key_id="a")}
    assert (ledger[first.id].images, ledger[first.id].free_images) == (2, 2)
    assert ledger[first.id].amount_micros == 0
    assert (ledger[second.id].images, ledger[second.id].free_images) == (2, 1)
    assert ledger[second.id].amount_micros == PRICE
    assert (ledger[failed.id].images, ledger[failed.id].amount_micros) == (0, 0)
    assert ledger[failed.id].status == TaskStatus.FAILED
    assert (ledger[partial.id].images, ledger[partial.id].free_images) == (1, 0)
    assert ledger[partial.id].amount_micros == PRICE
    assert store.ledger.free_images_used("a", "wanx-v1") == 3


def test_free_images_do_not_count_after_they_expire(store: SqlStores) -> None:
    terms = TaskTerms(in_flight=10, price_micros=PRICE, free_quota=100, free_until=time.time() - 1)
    task = add_task(store, key="a", terms=terms)
    run_to_end(store, "w", TaskStatus.SUCCEEDED, ok(2))
    (entry,) = store.ledger.entries(api_key_id="a")
    assert entry.task_id == task.id
    assert (entry.free_images, entry.amount_micros) == (0, 2 * PRICE)


def test_cancelled_and_reaped_tasks_enter_the_ledger_free(store: SqlStores) -> None:
    cancelled = add_task(store, key="a")
    assert store.tasks.cancel_pending(cancelled.id, "a")
    lost = add_task(store, key="a", max_attempts=1)
    claimed(store, "w", ["wanx-v1"], lease=0.05)
    time.sleep(0.12)
    assert (lost.id, TaskStatus.FAILED) in store.queue.reap_expired_leases()

    ledger = {e.task_id: e for e in store.ledger.entries()}
    assert ledger[cancelled.id].status == TaskStatus.CANCELED
    assert ledger[lost.id].status == TaskStatus.FAILED
    assert all(e.images == e.amount_micros == 0 for e in ledger.values())


def test_standing_counts_waiting_reserved_free_and_charged(store: SqlStores) -> None:
    terms = TaskTerms(in_flight=10, price_micros=PRICE, free_quota=1, free_until=time.time() + 60)
    add_task(store, key="a", terms=terms)
    run_to_end(store, "w", TaskStatus.SUCCEEDED, ok(2))  # 1 free + 1 charged
    add_task(store, key="a", terms=terms)
    add_task(store, key="a", terms=terms, model="wan2.2-t2i-flash")
    add_task(store, key="b", terms=terms)
    add_task(store, key="a", terms=terms)
    seen: list[KeyStanding] = []

    add_task(store, key="a", terms=terms, admit=seen.append, month_start=0.0)
    (standing,) = seen
    assert standing.pending == 3  # a's waiting tasks, all models
    assert standing.free_used == 1
    assert standing.reserved == 4  # a's two unfinished wanx-v1 tasks, n = 2 each
    assert standing.month_charged_micros == PRICE


def test_a_refused_admission_inserts_nothing(store: SqlStores) -> None:
    def refuse(standing: KeyStanding) -> None:
        raise AllocationQuotaExceeded()

    with pytest.raises(AllocationQuotaExceeded):
        add_task(store, key="a", task_id="refused", admit=refuse)
    assert store.tasks.get_task("refused") is None


def test_admission_is_atomic_across_connections(make_store: Callable[[], SqlStores]) -> None:
    """Eight 'API processes' race to queue 40 tasks under a cap of 5 waiting."""
    stores = [make_store() for _ in range(8)]
    accepted, refused = [], []

    def cap(standing: KeyStanding) -> None:
        if standing.pending >= 5:
            raise AllocationQuotaExceeded()

    def submit(store: SqlStores) -> None:
        for _ in range(5):
            try:
                accepted.append(add_task(store, key="a", admit=cap))
            except AllocationQuotaExceeded:
                refused.append(1)

    threads = [threading.Thread(target=submit, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(accepted), len(refused)) == (5, 35)


def test_token_bucket_allows_a_burst_then_refills(make_store: Callable[[], SqlStores]) -> None:
    one, other = make_store(), make_store()  # two processes share one bucket
    assert one.buckets.take_token("submit:a:m", rate=2, burst=2)
    assert other.buckets.take_token("submit:a:m", rate=2, burst=2)
    assert not one.buckets.take_token("submit:a:m", rate=2, burst=2)
    assert one.buckets.take_token("submit:b:m", rate=2, burst=2)  # another bucket is untouched
    time.sleep(0.6)  # refills 1.2 tokens
    assert other.buckets.take_token("submit:a:m", rate=2, burst=2)
    assert not one.buckets.take_token("submit:a:m", rate=2, burst=2)


def test_key_revoke_and_settings(store: SqlStores) -> None:
    from imagesynth.accounts.settings import KeySettings

    key = store.keys.insert_key("id-1", "ci", "sk-abcd", "hash")
    assert key.settings == KeySettings()
    updated = store.keys.update_key_settings("id-1", KeySettings(free_tier_only=True))
    assert updated is not None and updated.settings.free_tier_only
    assert store.keys.revoke_key("id-1") and not store.keys.revoke_key("id-1")
    revoked = store.keys.get_key("id-1")
    assert revoked is not None and revoked.revoked_at is not None


def test_a_database_from_before_the_limits_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            """CREATE TABLE tasks (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, api_key_id TEXT
            NOT NULL, model TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,
            request_id TEXT NOT NULL, workspace TEXT, attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL, worker_id TEXT, lease_until REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
            started_at REAL, finished_at REAL, progress_step INTEGER NOT NULL DEFAULT 0,
            progress_total INTEGER NOT NULL DEFAULT 0, results TEXT, error_code TEXT,
            error_message TEXT)"""
        )
        conn.execute(
            """CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT
            NULL, secret_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL,
            last_used_at REAL, revoked_at REAL)"""
        )
    store = SqlStores.open(f"sqlite:///{path}")
    init_schema(store.db)
    init_schema(store.db)  # idempotent
    task = add_task(store)
    assert claimed(store, "w", ["wanx-v1"]).id == task.id


def test_migration_looks_at_its_own_schema_only() -> None:
    """Two deployments in two schemas of one PostgreSQL database: a newer one's columns do not
    make the older one's migration skip them."""
    from tests.conftest import fresh_postgres_schema

    with fresh_postgres_schema() as newer_url, fresh_postgres_schema() as older_url:
        newer = SqlStores.open(newer_url)  # every column, in its own schema
        older = SqlStores.open(older_url)
        with older.db.transaction():
            older.db.execute("ALTER TABLE tasks DROP COLUMN previews_made")
        init_schema(older.db)  # as a restart of the older deployment after an upgrade
        add_task(older)
        assert claimed(older, "w", ["wanx-v1"]).previews_made == 0
        newer.close()
        older.close()
