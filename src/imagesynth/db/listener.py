"""PostgreSQL LISTEN: relays every process's NOTIFYs (Database.notify) to this process's hub.

One thread and one connection per process. While the connection is down, nobody is woken
and everyone falls back to polling; after a reconnect every subscriber is woken once, since
events may have been missed meanwhile.
"""

from __future__ import annotations

import logging
import threading

from imagesynth.db.database import PG_CHANNEL
from imagesynth.tasks.events import EventHub

log = logging.getLogger(__name__)

_RECONNECT_SECONDS = 1.0


class PgListener:
    def __init__(self, dsn: str, events: EventHub) -> None:
        self.dsn = dsn
        self.events = events
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start listening (once); returns when the first LISTEN is in place, or after a
        few seconds if the database cannot be reached (polling covers the gap)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
            self._thread.start()
        self._ready.wait(5.0)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {PG_CHANNEL}")
                    self._ready.set()
                    if not first:
                        self.events.wake_all()
                    first = False
                    while not self._stop.is_set():
                        # The timeout lets the thread notice stop() while nothing happens.
                        for note in conn.notifies(timeout=1.0):
                            topic, _, key = note.payload.partition(":")
                            self.events.publish(topic, key)
            except Exception:
                if self._stop.is_set():
                    return
                log.warning(
                    "PostgreSQL LISTEN connection lost; polling until it is back", exc_info=True
                )
                self._ready.set()
                self._stop.wait(_RECONNECT_SECONDS)
