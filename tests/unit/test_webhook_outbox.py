"""The webhook outbox's SQL (db/webhooks.py), against SQLite and PostgreSQL: every way a task
ends writes its deliveries in the same transaction; claims are leased and fenced; attempts
move a delivery on and are logged (docs/webhooks.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from imagesynth.db import SqlStores
from imagesynth.domain import TaskStatus
from imagesynth.tasks.webhooks import AttemptOutcome, Delivery
from tests.unit.test_store import add_task, claimed

HOOK = "https://hooks.example.com/a"
FAILED_ONLY = "https://hooks.example.com/failed"
CALLBACK = "https://client.example.com/cb"
GIVE_UP = 3600.0


def deliveries(store: SqlStores, task_id: str) -> dict[str, Delivery]:
    """The task's deliveries by URL."""
    return {d.url: d for d in store.webhooks.deliveries(task_id=task_id)}


def retry(seconds: float) -> AttemptOutcome:
    return AttemptOutcome(False, 500, "HTTP 500", 3, retry_in=seconds)


OK = AttemptOutcome(True, 204, None, 2)


def test_every_way_a_task_ends_queues_its_deliveries(store: SqlStores) -> None:
    store.webhooks.add_endpoint("key-a", HOOK, None, "whsec_a")
    store.webhooks.add_endpoint("key-a", FAILED_ONLY, ["task.failed"], "whsec_b")
    store.webhooks.add_endpoint("key-b", "https://other.example.com/", None, "whsec_c")

    done = add_task(store, callback_url=CALLBACK)
    t = claimed(store, "w1", ["wanx-v1"])
    assert store.queue.finish(t.id, "w1", t.attempts, TaskStatus.SUCCEEDED)

    failed = add_task(store)
    t = claimed(store, "w1", ["wanx-v1"])
    assert store.queue.finish(t.id, "w1", t.attempts, TaskStatus.FAILED, error_code="X")

    canceled = add_task(store)
    assert store.tasks.cancel_pending(canceled.id, "key-a")
    abandoned = add_task(store)
    assert store.tasks.request_cancel(abandoned.id) == TaskStatus.CANCELED

    lost = add_task(store, max_attempts=1)
    claimed(store, "w1", ["wanx-v1"], lease=0.05)
    time.sleep(0.12)
    assert (lost.id, TaskStatus.FAILED) in store.queue.reap_expired_leases()

    got = deliveries(store, done.id)
    assert set(got) == {HOOK, CALLBACK}  # not the failed-only endpoint, not key-b's
    assert {d.event for d in got.values()} == {"task.succeeded"}
    assert got[CALLBACK].endpoint_id is None and got[CALLBACK].id == f"msg_{done.id}"
    assert set(deliveries(store, failed.id)) == {HOOK, FAILED_ONLY}
    assert deliveries(store, failed.id)[HOOK].event == "task.failed"
    for task in (canceled, abandoned):
        assert [(d.url, d.event) for d in deliveries(store, task.id).values()] == [
            (HOOK, "task.canceled")
        ]
    assert set(deliveries(store, lost.id)) == {HOOK, FAILED_ONLY}
    for d in store.webhooks.deliveries():
        assert (d.status, d.attempts, d.api_key_id) == ("PENDING", 0, "key-a")


def test_only_an_end_queues_deliveries_and_only_once(store: SqlStores) -> None:
    store.webhooks.add_endpoint("key-a", HOOK, None, "whsec_a")
    task = add_task(store)
    t = claimed(store, "w1", ["wanx-v1"])
    assert store.queue.release(t.id, "w1", t.attempts)  # back to PENDING: no end
    assert store.webhooks.deliveries(task_id=task.id) == []
    t = claimed(store, "w1", ["wanx-v1"])
    assert store.queue.finish(t.id, "w1", t.attempts, TaskStatus.SUCCEEDED)
    # A stale worker's finish is refused, and queues nothing more.
    assert not store.queue.finish(t.id, "w1", t.attempts, TaskStatus.FAILED)
    assert len(store.webhooks.deliveries(task_id=task.id)) == 1


def test_claims_are_leased_and_attempts_fenced(make_store: Callable[[], SqlStores]) -> None:
    one, two = make_store(), make_store()  # two processes
    one.webhooks.add_endpoint("key-a", HOOK, None, "whsec_a")
    task = add_task(one, callback_url=CALLBACK)
    assert one.tasks.cancel_pending(task.id, "key-a")

    first = one.webhooks.claim_due("one", lease_seconds=0.2, limit=10)
    assert {d.url for d in first} == {HOOK, CALLBACK}
    by_url = {d.url: d for d in first}
    assert by_url[HOOK].secret == "whsec_a"
    assert by_url[CALLBACK].secret is None  # the key's callback secret is made on first use
    assert two.webhooks.claim_due("two", lease_seconds=30, limit=10) == []  # leased

    time.sleep(0.3)  # "one" died mid-attempt: its leases run out
    again = two.webhooks.claim_due("two", lease_seconds=30, limit=10)
    assert {d.id for d in again} == {d.id for d in first}  # the same ids: at least once
    # The first owner's late outcome is refused; the new owner's counts.
    assert one.webhooks.record_attempt(by_url[HOOK], "one", "{}", OK, GIVE_UP) is None
    assert two.webhooks.record_attempt(by_url[HOOK], "two", "{}", OK, GIVE_UP) == "DELIVERED"


def test_attempts_retry_then_deliver_and_are_logged(store: SqlStores) -> None:
    store.webhooks.add_endpoint("key-a", HOOK, None, "whsec_a")
    task = add_task(store)
    assert store.tasks.cancel_pending(task.id, "key-a")
    (d,) = store.webhooks.claim_due("me", 30, 10)
    assert store.webhooks.record_attempt(d, "me", '{"n":1}', retry(0.5), GIVE_UP) == "PENDING"
    assert store.webhooks.claim_due("me", 30, 10) == []  # not due before its retry
    time.sleep(0.55)
    (d,) = store.webhooks.claim_due("me", 30, 10)
    assert d.attempts == 1 and d.body == '{"n":1}'  # the body fixed by the first attempt
    assert store.webhooks.record_attempt(d, "me", '{"n":2}', OK, GIVE_UP) == "DELIVERED"
    assert store.webhooks.claim_due("me", 30, 10) == []

    (done,) = store.webhooks.deliveries(status="DELIVERED")
    assert (done.attempts, done.body, done.last_error) == (2, '{"n":1}', None)
    assert [(a.attempt, a.status_code, a.error) for a in done.log] == [
        (1, 500, "HTTP 500"),
        (2, 204, None),
    ]
    assert done.finished_at is not None


def test_a_delivery_fails_once_its_retries_would_pass_the_give_up_age(store: SqlStores) -> None:
    store.webhooks.add_endpoint("key-a", HOOK, None, "whsec_a")
    task = add_task(store)
    assert store.tasks.cancel_pending(task.id, "key-a")
    (d,) = store.webhooks.claim_due("me", 30, 10)
    assert store.webhooks.record_attempt(d, "me", "{}", retry(0.05), 10.0) == "PENDING"
    time.sleep(0.1)
    (d,) = store.webhooks.claim_due("me", 30, 10)
    assert store.webhooks.record_attempt(d, "me", "{}", retry(20.0), 10.0) == "FAILED"
    (failed,) = store.webhooks.deliveries(status="FAILED")
    assert failed.attempts == 2 and failed.last_error == "HTTP 500"
    assert store.webhooks.claim_due("me", 30, 10) == []
    # Finished deliveries are forgotten after the retention period, with their log.
    assert store.webhooks.forget_finished(3600) == 0
    time.sleep(0.02)  # past the database clock's resolution (SQLite: 1 ms)
    assert store.webhooks.forget_finished(0) == 1
    assert store.webhooks.deliveries() == []


def test_concurrent_claims_take_different_rows(make_store: Callable[[], SqlStores]) -> None:
    store = make_store()
    store.webhooks.add_endpoint("key-a", HOOK, None, "whsec_a")
    for _ in range(12):
        task = add_task(store)
        assert store.tasks.cancel_pending(task.id, "key-a")
    senders = [make_store() for _ in range(4)]
    taken: list[list[str]] = [[] for _ in senders]

    def claim(i: int) -> None:
        while got := senders[i].webhooks.claim_due(f"s{i}", 30, 1):
            taken[i].extend(d.id for d in got)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(senders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for chunk in taken for i in chunk]
    assert len(ids) == 12 and len(set(ids)) == 12


def test_endpoints_and_the_callback_secret(store: SqlStores) -> None:
    a = store.webhooks.add_endpoint("key-a", HOOK, ["task.failed", "task.canceled"], "whsec_a")
    assert a.events == ("task.failed", "task.canceled")
    assert [e.id for e in store.webhooks.endpoints("key-a")] == [a.id]
    assert store.webhooks.endpoints("key-b") == []
    assert not store.webhooks.remove_endpoint("key-b", a.id)  # another key's
    assert store.webhooks.remove_endpoint("key-a", a.id)
    assert store.webhooks.endpoints("key-a") == []
    secret = store.webhooks.callback_secret("key-a")
    assert secret.startswith("whsec_") and store.webhooks.callback_secret("key-a") == secret
    assert store.webhooks.callback_secret("key-b") != secret
