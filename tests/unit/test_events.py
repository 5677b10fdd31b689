"""Wake-ups (tasks/events.py): the stores announce queued, handed-back and ended tasks once
their transactions commit; on PostgreSQL every process hears every other's, through
LISTEN/NOTIFY; on SQLite only the process that made the change."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from imagesynth.catalog import Catalog
from imagesynth.db import SqlStores
from imagesynth.domain import TaskStatus
from imagesynth.tasks.events import EventHub
from imagesynth.tasks.models import ImageResult

SPEC = Catalog.load().get("wan2.2-t2i-flash")


class Heard:
    """What a subscriber heard, and a way to wait for it."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, key: str) -> None:
        with self._changed:
            self.keys.append(key)
            self._changed.notify_all()

    def wait_for(self, key: str, timeout: float = 10.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: key in self.keys, timeout)


def queue_one(stores: SqlStores, task_id: str, rewrite: bool = False) -> None:
    stores.tasks.insert_task(
        task_id=task_id,
        api_key_id="k",
        model=SPEC.name,
        params=SPEC.validate(prompt="a", size="512*512", n=1),
        request_id="r",
        workspace=None,
        max_attempts=3,
        rewrite_prompt=rewrite,
    )


def test_queued_handed_back_and_ended_tasks_are_announced(
    store_url: str, make_store: Callable[[], SqlStores]
) -> None:
    listening = make_store()
    # PostgreSQL: another "process" makes the changes; SQLite: only this one can be heard.
    changing = make_store() if store_url.startswith("postgresql") else listening
    claimable, ended = Heard(), Heard()
    listening.events.on_claimable(claimable)
    listening.events.on_ended("00000000-0000-4000-8000-000000000001", ended)

    queue_one(changing, "00000000-0000-4000-8000-000000000001")
    assert claimable.wait_for(SPEC.name)
    claimable.keys.clear()
    task = changing.queue.claim("w", [SPEC.name], 30)
    assert task is not None
    assert changing.queue.release(task.id, "w", task.attempts)
    assert claimable.wait_for(SPEC.name)  # handed back: claimable again
    task = changing.queue.claim("w", [SPEC.name], 30)
    assert task is not None
    assert not ended.keys
    assert changing.queue.finish(
        task.id, "w", task.attempts, TaskStatus.SUCCEEDED, [ImageResult("x")]
    )
    assert ended.wait_for(task.id)


def test_a_refused_transaction_announces_nothing(tmp_path: object) -> None:
    stores = SqlStores.open(f"sqlite:///{tmp_path}/e.db")
    heard = Heard()
    stores.events.on_claimable(heard)
    with pytest.raises(RuntimeError), stores.db.transaction():
        stores.db.notify(("claimable", SPEC.name))
        raise RuntimeError("rolled back")
    assert heard.keys == []
    with stores.db.transaction():
        stores.db.notify(("claimable", SPEC.name))
        assert heard.keys == []  # not before the commit
    assert heard.keys == [SPEC.name]
    stores.close()


def test_a_task_waiting_for_its_rewrite_wakes_the_prompt_stage_not_the_workers(
    tmp_path: object,
) -> None:
    stores = SqlStores.open(f"sqlite:///{tmp_path}/r.db")
    claimable, rewrite = Heard(), Heard()
    stores.events.on_claimable(claimable)
    stores.events.on_rewrite(rewrite)
    queue_one(stores, "00000000-0000-4000-8000-000000000002", rewrite=True)
    assert rewrite.keys == [SPEC.name] and claimable.keys == []
    assert stores.prompts.set_actual_prompt("00000000-0000-4000-8000-000000000002", "b", None)
    assert claimable.keys == [SPEC.name]
    stores.close()


def test_an_unsubscribed_callback_hears_nothing_more() -> None:
    hub = EventHub()
    heard = Heard()
    unsubscribe = hub.on_ended("t", heard)
    hub.publish("ended", "other")
    hub.publish("ended", "t")
    unsubscribe()
    hub.publish("ended", "t")
    assert heard.keys == ["t"]
