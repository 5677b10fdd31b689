"""Wake-ups inside one process: who is told that tasks may be claimed or have ended.

An event is a hint, never the record: whoever is woken reads the database, and everyone who
waits on one also polls (slowly) as the fallback, so a lost event costs latency, not a task.
The SQL stores publish here after their transactions commit; on PostgreSQL a listener
(db/listener.py) relays NOTIFYs from every other process too (docs/task-queue.md#wake-ups).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# Topics, and what their key is.
CLAIMABLE = "claimable"  # key: a model. A task of it may be claimable now (queued, handed back,
# or a slot under some key's in-flight limit came free).
ENDED = "ended"  # key: a task id. The task reached a final status.
REWRITE = "rewrite"  # key: a model. A task waits for its prompt_extend rewrite.
PROGRESS = "progress"  # key: a task id. Its step or its previews moved on (or its status).
TOPICS = (CLAIMABLE, ENDED, REWRITE, PROGRESS)
ANY = ""  # a subscription key that hears every key of its topic


class EventHub:
    """tasks.ports.TaskEvents for one process. Callbacks run on the publisher's thread (a
    store's caller, or the PostgreSQL listener): they must be quick and must not block; set
    an Event or hand over to a loop with call_soon_threadsafe."""

    def __init__(self) -> None:
        self._subscribers: dict[tuple[str, str], dict[int, Callable[[str], None]]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def subscribe(
        self, topic: str, key: str, callback: Callable[[str], None]
    ) -> Callable[[], None]:
        """Call `callback(key)` on every event of `topic` for `key` (ANY: for every key);
        returns the function that ends the subscription."""
        if topic not in TOPICS:
            raise ValueError(f"unknown topic {topic!r}")
        with self._lock:
            self._next += 1
            token = self._next
            self._subscribers.setdefault((topic, key), {})[token] = callback

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._subscribers.get((topic, key))
                if callbacks is not None:
                    callbacks.pop(token, None)
                    if not callbacks:
                        del self._subscribers[topic, key]

        return unsubscribe

    def publish(self, topic: str, key: str) -> None:
        with self._lock:
            callbacks = [
                *self._subscribers.get((topic, key), {}).values(),
                *self._subscribers.get((topic, ANY), {}).values(),
            ]
        _deliver(callbacks, key)

    def wake_all(self) -> None:
        """Wake every subscriber at once: events may have been missed (the PostgreSQL
        listener reconnected), so everyone should look again."""
        with self._lock:
            subscribed = [(key, list(cbs.values())) for (_, key), cbs in self._subscribers.items()]
        for key, callbacks in subscribed:
            _deliver(callbacks, key)

    # -- tasks.ports.TaskEvents -----------------------------------------------------------

    def on_claimable(self, callback: Callable[[str], None]) -> Callable[[], None]:
        return self.subscribe(CLAIMABLE, ANY, callback)

    def on_ended(self, task_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        return self.subscribe(ENDED, task_id, callback)

    def on_rewrite(self, callback: Callable[[str], None]) -> Callable[[], None]:
        return self.subscribe(REWRITE, ANY, callback)

    def on_change(self, task_id: str, callback: Callable[[str], None]) -> Callable[[], None]:
        unsubscribe = (
            self.subscribe(PROGRESS, task_id, callback),
            self.subscribe(ENDED, task_id, callback),
        )

        def both() -> None:
            for one in unsubscribe:
                one()

        return both


def _deliver(callbacks: list[Callable[[str], None]], key: str) -> None:
    """Call each with `key`; one that fails is logged and does not stop the others."""
    for callback in callbacks:
        try:
            callback(key)
        except Exception:
            log.exception("event subscriber failed")
