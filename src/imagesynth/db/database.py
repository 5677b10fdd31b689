"""Dialects, connections and transactions: what every SQL store shares.

One set of statements serves SQLite (embedded default, WAL) and PostgreSQL. They differ only in
DDL, placeholders (`:name` vs `%(name)s`, translated here), the clock expression and the locks
(PostgreSQL's advisory locks; SQLite's single writer needs none). Times are epoch seconds from
the database's clock, so several machines agree on leases.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagesynth.errors import ImageSynthError
from imagesynth.tasks.events import EventHub

FINAL_STATUSES = "('SUCCEEDED', 'FAILED', 'CANCELED')"
PG_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7239512014)"  # arbitrary constant keys
PG_CLAIM_LOCK = "SELECT pg_advisory_xact_lock(7239512015)"
PG_KEY_LOCK = "SELECT pg_advisory_xact_lock(hashtext(:lock_name))"
# One channel for every wake-up; the payload is "<topic>:<key>" (tasks/events.py).
PG_CHANNEL = "imagesynth"


class DatabaseUrlError(ImageSynthError):
    """The database URL is not one imagesynth can use."""


class Dialect(Protocol):
    name: str
    now: str
    next_seq: str
    least: str
    real: str  # the column type of epoch seconds
    serial: str  # the column type of tasks.seq
    # Serialise a transaction against others that take the same lock. Empty for SQLite,
    # whose BEGIN IMMEDIATE already serialises every writing transaction.
    schema_lock: str
    claim_lock: str
    key_lock: str
    # Appended to a SELECT that claims rows: several processes take different ones.
    skip_locked: str

    def connect(self) -> Any: ...
    def translate(self, sql: str) -> str: ...
    def column_names(self, conn: Any, table: str) -> set[str]: ...


@dataclass
class SqliteDialect:
    path: Path
    name: str = "sqlite"
    # julianday() has sub-millisecond resolution; unixepoch('subsec') needs SQLite 3.42.
    now: str = "((julianday('now') - 2440587.5) * 86400.0)"
    # Safe without a sequence: inserts hold SQLite's single write lock.
    next_seq: str = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks)"
    least: str = "MIN"
    real: str = "REAL"
    serial: str = "INTEGER NOT NULL"
    schema_lock: str = ""
    claim_lock: str = ""
    key_lock: str = ""
    skip_locked: str = ""  # SQLite's one writer at a time: nothing to skip

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        # Switching a fresh database to WAL needs it to itself, and SQLite answers "locked" at
        # once rather than waiting when processes start together: retry for a while.
        deadline = time.monotonic() + 30.0
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def translate(self, sql: str) -> str:
        return sql

    def column_names(self, conn: Any, table: str) -> set[str]:
        return {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}


@dataclass
class PostgresDialect:
    dsn: str
    name: str = "postgresql"
    now: str = "(extract(epoch from clock_timestamp())::double precision)"
    next_seq: str = "nextval('tasks_seq_seq')"
    least: str = "LEAST"
    real: str = "DOUBLE PRECISION"
    serial: str = "BIGSERIAL"
    # Concurrent CREATE ... IF NOT EXISTS still collide in PostgreSQL's catalog (replicas
    # and workers starting at once on a fresh database): the schema is made under one lock.
    schema_lock: str = PG_SCHEMA_LOCK
    # Claims serialise on one lock: the in-flight limit counts RUNNING rows of other
    # transactions, which row locks cannot protect. A claim takes ~2 ms: 500 claims/s.
    claim_lock: str = PG_CLAIM_LOCK
    key_lock: str = PG_KEY_LOCK
    skip_locked: str = " FOR UPDATE SKIP LOCKED"

    def connect(self) -> Any:
        import psycopg  # optional dependency: only PostgreSQL deployments need it
        from psycopg.rows import dict_row

        return psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)

    def translate(self, sql: str) -> str:
        return re.sub(r"(?<!:):([a-z_][a-z0-9_]*)", r"%(\1)s", sql)

    def column_names(self, conn: Any, table: str) -> set[str]:
        rows = conn.execute(
            # This schema's table only: another schema of the same database (another
            # deployment, or another test) may hold a newer or older one.
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %(t)s",
            {"t": table},
        )
        return {row["column_name"] for row in rows}


def dialect_for(url: str) -> Dialect:
    if url.startswith("sqlite:///"):
        return SqliteDialect(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDialect(url)
    raise DatabaseUrlError(
        f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://..."
    )


class Database:
    """One database for every store. Thread-safe: each thread gets its own connection.

    `events` is this process's wake-up hub: stores announce changes with notify(). On
    PostgreSQL the announcement is a NOTIFY in the same transaction, delivered to every
    process's listener (db/listener.py) at commit; on SQLite it reaches this process's hub
    once the transaction has committed (other processes poll)."""

    def __init__(self, url: str) -> None:
        self.dialect = dialect_for(url)
        self.events = EventHub()
        self._local = threading.local()

    def connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        # A PostgreSQL connection that the server (or the network) dropped stays closed:
        # open a new one, so that the process recovers when the database is back.
        if conn is None or getattr(conn, "closed", False):
            conn = self.dialect.connect()
            self._local.conn = conn
        return conn

    def sql(self, sql: str) -> str:
        """A statement in this dialect: {now}, {least} and {next_seq} filled in."""
        return self.dialect.translate(
            sql.replace("{now}", self.dialect.now)
            .replace("{least}", self.dialect.least)
            .replace("{next_seq}", self.dialect.next_seq)
        )

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.connection().execute(self.sql(sql), params or {})

    @contextmanager
    def transaction(self) -> Iterator[None]:
        conn = self.connection()
        # SQLite: IMMEDIATE takes the write lock up front, so readers-turned-writers never
        # deadlock. PostgreSQL: a plain transaction; row and advisory locks do the rest.
        conn.execute("BEGIN IMMEDIATE" if self.dialect.name == "sqlite" else "BEGIN")
        self._local.pending = []
        try:
            yield
        except BaseException:
            self._local.pending = None
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        pending, self._local.pending = self._local.pending, None
        for topic, key in pending:
            self.events.publish(topic, key)

    def notify(self, *events: tuple[str, str]) -> None:
        """Announce events, (topic, key) each (tasks/events.py), once the current transaction
        commits, or now outside one. PostgreSQL: one statement for all of them."""
        if not events:
            return
        if self.dialect.name == "postgresql":
            calls = ", ".join(f"pg_notify(:channel, :p{i})" for i in range(len(events)))
            payloads = {f"p{i}": f"{topic}:{key}" for i, (topic, key) in enumerate(events)}
            self.execute(f"SELECT {calls}", {"channel": PG_CHANNEL, **payloads})
            return
        pending = getattr(self._local, "pending", None)
        for topic, key in events:
            if pending is None:
                self.events.publish(topic, key)
            else:
                pending.append((topic, key))

    def lock(self, statement: str, **params: Any) -> None:
        """Take one of the dialect's transaction locks (nothing to do where it has none)."""
        if statement:
            self.execute(statement, params)

    def lock_key(self, api_key_id: str) -> None:
        """Serialise this transaction with others touching the same key's quota."""
        self.lock(self.dialect.key_lock, lock_name=f"key:{api_key_id}")

    def now(self) -> float:
        return float(self.execute("SELECT {now} AS now").fetchone()["now"])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
