"""The SQL stores: one database (SQLite or PostgreSQL, the same statements) and one store per
concern, each implementing the narrow port its consumers see (tasks/ports.py,
accounts/ports.py). Only the composition root (runtime.py) builds them; see
docs/task-queue.md for the protocol the statements implement."""

from __future__ import annotations

from dataclasses import dataclass

from imagesynth.db.database import Database, PostgresDialect
from imagesynth.db.keys import SqlKeyStore
from imagesynth.db.ledger import SqlLedger
from imagesynth.db.listener import PgListener
from imagesynth.db.prompt_queue import SqlPromptQueue
from imagesynth.db.queue import SqlTaskQueue
from imagesynth.db.rate_buckets import SqlRateBuckets
from imagesynth.db.schema import init_schema
from imagesynth.db.tasks import SqlTaskStore
from imagesynth.db.webhooks import SqlWebhooks
from imagesynth.db.workers import SqlWorkers
from imagesynth.tasks.events import EventHub


@dataclass(frozen=True)
class SqlStores:
    """Every store, on one database."""

    db: Database
    tasks: SqlTaskStore
    queue: SqlTaskQueue
    prompts: SqlPromptQueue
    keys: SqlKeyStore
    buckets: SqlRateBuckets
    ledger: SqlLedger
    workers: SqlWorkers  # the workers table, and what /ready and /metrics read
    webhooks: SqlWebhooks  # endpoints, callback secrets and the outbox (docs/webhooks.md)
    listener: PgListener | None  # PostgreSQL's NOTIFY relay, started by the first `events`

    @classmethod
    def open(cls, url: str) -> SqlStores:
        """The stores on the database at `url`, its schema created or brought up to date."""
        db = Database(url)
        init_schema(db)
        return cls(
            db=db,
            tasks=SqlTaskStore(db),
            queue=SqlTaskQueue(db),
            prompts=SqlPromptQueue(db),
            keys=SqlKeyStore(db),
            buckets=SqlRateBuckets(db),
            ledger=SqlLedger(db),
            workers=SqlWorkers(db),
            webhooks=SqlWebhooks(db),
            listener=(
                PgListener(db.dialect.dsn, db.events)
                if isinstance(db.dialect, PostgresDialect)
                else None
            ),
        )

    @property
    def events(self) -> EventHub:
        """This process's wake-ups (tasks.ports.TaskEvents): on PostgreSQL, listening for
        every process's from the first use on."""
        if self.listener is not None:
            self.listener.start()
        return self.db.events

    def close(self) -> None:
        """Close this thread's connection (and stop listening)."""
        if self.listener is not None:
            self.listener.stop()
        self.db.close()


__all__ = ["Database", "SqlStores"]
