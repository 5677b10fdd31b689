"""The task store in SQL: the tasks table is the queue (see design/task-queue.md).

One set of statements serves SQLite (embedded default, WAL) and PostgreSQL. They differ only in
DDL, placeholders (`:name` vs `%(name)s`, translated here), the clock expression and the lock
clause of the claim (`FOR UPDATE SKIP LOCKED` in PostgreSQL; SQLite's single writer needs none).
Every state change is one conditional UPDATE whose row count says whether it happened.
Times are epoch seconds from the database's clock, so several machines agree on leases.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagesynth.accounts.settings import KeySettings
from imagesynth.tasks.models import (
    ApiKey,
    GenerationParams,
    ImageResult,
    KeyStanding,
    LedgerEntry,
    Task,
    TaskFilter,
    TaskStatus,
    TaskTerms,
)

TASK_COLUMNS = (
    "id, seq, api_key_id, model, params, status, request_id, workspace, attempts, max_attempts, "
    "worker_id, lease_until, cancel_requested, created_at, started_at, finished_at, "
    "progress_step, progress_total, results, error_code, error_message, "
    "n, in_flight, price_micros, free_quota, free_until, actual_prompt, prompt_ready, prompt_note"
)
KEY_COLUMNS = "id, name, prefix, created_at, last_used_at, revoked_at, settings"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    seq {serial},
    api_key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    request_id TEXT NOT NULL,
    workspace TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    worker_id TEXT,
    lease_until {real},
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL,
    started_at {real},
    finished_at {real},
    progress_step INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    results TEXT,
    error_code TEXT,
    error_message TEXT,
    n INTEGER NOT NULL DEFAULT 1,
    in_flight INTEGER NOT NULL DEFAULT 2,
    price_micros INTEGER NOT NULL DEFAULT 0,
    free_quota INTEGER NOT NULL DEFAULT 0,
    free_until {real} NOT NULL DEFAULT 0,
    actual_prompt TEXT,
    prompt_ready INTEGER NOT NULL DEFAULT 1,
    prompt_note TEXT,
    prompt_lease_until {real}
);
CREATE INDEX IF NOT EXISTS tasks_running ON tasks (lease_until) WHERE status = 'RUNNING';
CREATE INDEX IF NOT EXISTS tasks_seq ON tasks (seq);
CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (api_key_id, created_at);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL,
    last_used_at {real},
    revoked_at {real},
    settings TEXT
);
CREATE TABLE IF NOT EXISTS usage_ledger (
    task_id TEXT PRIMARY KEY,
    api_key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at {real} NOT NULL,
    finished_at {real} NOT NULL,
    images INTEGER NOT NULL,
    free_images INTEGER NOT NULL,
    amount_micros BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_key ON usage_ledger (api_key_id, model, created_at);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage_ledger (created_at);
CREATE TABLE IF NOT EXISTS queue_turns (
    api_key_id TEXT PRIMARY KEY,
    last_turn BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_buckets (
    bucket TEXT PRIMARY KEY,
    tokens {real} NOT NULL,
    updated_at {real} NOT NULL
);
"""

# Columns added after the first release: ALTERed into databases created before them.
_ADDED_COLUMNS = (
    ("tasks", "n", "INTEGER NOT NULL DEFAULT 1"),
    ("tasks", "in_flight", "INTEGER NOT NULL DEFAULT 2"),
    ("tasks", "price_micros", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "free_quota", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "free_until", "{real} NOT NULL DEFAULT 0"),
    ("tasks", "actual_prompt", "TEXT"),
    ("tasks", "prompt_ready", "INTEGER NOT NULL DEFAULT 1"),
    ("tasks", "prompt_note", "TEXT"),
    ("tasks", "prompt_lease_until", "{real}"),
    ("api_keys", "settings", "TEXT"),
)
# Indexes on added columns: created once the columns surely exist.
_LATE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS tasks_unrewritten ON tasks (seq) WHERE prompt_ready = 0",
    # Claims take the head of each key's queue: the key's oldest waiting task per model.
    "CREATE INDEX IF NOT EXISTS tasks_pending_heads ON tasks (model, api_key_id, seq) "
    "WHERE status = 'PENDING' AND prompt_ready = 1",
    # The FIFO claim's index, which the heads index replaced: kept, it only slows writes.
    "DROP INDEX IF EXISTS tasks_pending",
)

_FINAL = "('SUCCEEDED', 'FAILED', 'CANCELED')"
# What a statement that ends tasks returns for the usage ledger.
_LEDGER_SOURCE = (
    "id, api_key_id, model, status, created_at, finished_at, price_micros, free_quota, free_until"
)
_PG_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7239512014)"  # arbitrary constant keys
_PG_CLAIM_LOCK = "SELECT pg_advisory_xact_lock(7239512015)"
_PG_KEY_LOCK = "SELECT pg_advisory_xact_lock(hashtext(:lock_name))"


class Dialect(Protocol):
    name: str
    now: str
    next_seq: str
    least: str
    # Serialise a transaction against others that take the same lock. Empty for SQLite,
    # whose BEGIN IMMEDIATE already serialises every writing transaction.
    claim_lock: str
    key_lock: str

    def connect(self) -> Any: ...
    def translate(self, sql: str) -> str: ...
    def schema(self) -> list[str]: ...
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
    claim_lock: str = ""
    key_lock: str = ""

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

    def schema(self) -> list[str]:
        ddl = _SCHEMA.format(serial="INTEGER NOT NULL", real="REAL")
        return [s for s in ddl.split(";") if s.strip()]

    def column_names(self, conn: Any, table: str) -> set[str]:
        return {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}


@dataclass
class PostgresDialect:
    dsn: str
    name: str = "postgresql"
    now: str = "(extract(epoch from clock_timestamp())::double precision)"
    next_seq: str = "nextval('tasks_seq_seq')"
    least: str = "LEAST"
    # Claims serialise on one lock: the in-flight limit counts RUNNING rows of other
    # transactions, which row locks cannot protect. A claim takes ~2 ms: 500 claims/s.
    claim_lock: str = _PG_CLAIM_LOCK
    key_lock: str = _PG_KEY_LOCK

    def connect(self) -> Any:
        import psycopg  # optional dependency: only PostgreSQL deployments need it
        from psycopg.rows import dict_row

        return psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)

    def translate(self, sql: str) -> str:
        return re.sub(r"(?<!:):([a-z_][a-z0-9_]*)", r"%(\1)s", sql)

    def schema(self) -> list[str]:
        ddl = _SCHEMA.format(serial="BIGSERIAL", real="DOUBLE PRECISION")
        # Concurrent CREATE ... IF NOT EXISTS still collide in PostgreSQL's catalog (replicas
        # and workers starting at once on a fresh database): serialise them for the transaction.
        return [_PG_SCHEMA_LOCK, *(s for s in ddl.split(";") if s.strip())]

    def column_names(self, conn: Any, table: str) -> set[str]:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %(t)s",
            {"t": table},
        )
        return {row["column_name"] for row in rows}


def dialect_for(url: str) -> Dialect:
    if url.startswith("sqlite:///"):
        return SqliteDialect(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDialect(url)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")


def _row_to_task(row: Any) -> Task:
    return Task(
        id=row["id"],
        seq=row["seq"],
        api_key_id=row["api_key_id"],
        model=row["model"],
        params=GenerationParams.from_json(json.loads(row["params"])),
        status=TaskStatus(row["status"]),
        request_id=row["request_id"],
        workspace=row["workspace"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        worker_id=row["worker_id"],
        lease_until=row["lease_until"],
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress_step=row["progress_step"],
        progress_total=row["progress_total"],
        results=[ImageResult.from_json(r) for r in json.loads(row["results"] or "[]")],
        error_code=row["error_code"],
        error_message=row["error_message"],
        terms=TaskTerms(
            in_flight=row["in_flight"],
            price_micros=row["price_micros"],
            free_quota=row["free_quota"],
            free_until=row["free_until"],
        ),
        actual_prompt=row["actual_prompt"],
        prompt_ready=bool(row["prompt_ready"]),
        prompt_note=row["prompt_note"],
    )


def _row_to_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        settings=KeySettings.loads(row["settings"]),
    )


class SqlStore:
    """Thread-safe: each thread gets its own connection."""

    def __init__(self, url: str) -> None:
        self.dialect = dialect_for(url)
        self._local = threading.local()

    # -- plumbing -------------------------------------------------------------------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.dialect.connect()
            self._local.conn = conn
        return conn

    def _sql(self, sql: str) -> str:
        return self.dialect.translate(
            sql.replace("{now}", self.dialect.now)
            .replace("{least}", self.dialect.least)
            .replace("{next_seq}", self.dialect.next_seq)
        )

    def _execute(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self._conn().execute(self._sql(sql), params or {})

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self._conn()
        # SQLite: IMMEDIATE takes the write lock up front, so readers-turned-writers never
        # deadlock. PostgreSQL: a plain transaction; row locks do the rest.
        conn.execute("BEGIN IMMEDIATE" if self.dialect.name == "sqlite" else "BEGIN")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def init_schema(self) -> None:
        with self._transaction():
            for statement in self.dialect.schema():
                self._execute(statement)
            real = "REAL" if self.dialect.name == "sqlite" else "DOUBLE PRECISION"
            for table, column, ddl in _ADDED_COLUMNS:
                if column not in self.dialect.column_names(self._conn(), table):
                    self._execute(
                        f"ALTER TABLE {table} ADD COLUMN {column} {ddl.format(real=real)}"
                    )
            for statement in _LATE_INDEXES:
                self._execute(statement)

    def _lock_key(self, api_key_id: str) -> None:
        """Serialise this transaction with others touching the same key's quota."""
        if self.dialect.key_lock:
            self._execute(self.dialect.key_lock, {"lock_name": f"key:{api_key_id}"})

    def now(self) -> float:
        return float(self._execute("SELECT {now} AS now").fetchone()["now"])

    # -- tasks ----------------------------------------------------------------------------

    def insert_task(
        self,
        *,
        task_id: str,
        api_key_id: str,
        model: str,
        params: GenerationParams,
        request_id: str,
        workspace: str | None,
        max_attempts: int,
        terms: TaskTerms | None = None,
        admit: Callable[[KeyStanding], None] | None = None,
        month_start: float = 0.0,
        rewrite_prompt: bool = False,
    ) -> Task:
        """Queue a task. `admit` sees the key's standing under the key's lock and raises to
        refuse the task, so quota checks and the insert are one atomic step even with
        several API processes on one database. With `rewrite_prompt`, no worker takes the
        task until the prompt stage has rewritten its prompt (set_actual_prompt)."""
        terms = terms or TaskTerms()
        with self._transaction():
            self._lock_key(api_key_id)
            if admit is not None:
                admit(self._standing(api_key_id, model, month_start))
            # seq orders the queue (FIFO within a key; keys take turns, see claim()).
            row = self._execute(
                f"""INSERT INTO tasks (id, seq, api_key_id, model, params, status, request_id,
                    workspace, max_attempts, created_at, progress_total, n, in_flight,
                    price_micros, free_quota, free_until, prompt_ready)
                VALUES (:id, {{next_seq}}, :key, :model,
                    :params, 'PENDING', :request_id, :workspace, :max_attempts, {{now}}, :steps,
                    :n, :in_flight, :price, :free_quota, :free_until, :prompt_ready)
                RETURNING {TASK_COLUMNS}""",
                {
                    "id": task_id,
                    "key": api_key_id,
                    "model": model,
                    "params": json.dumps(params.to_json()),
                    "request_id": request_id,
                    "workspace": workspace,
                    "max_attempts": max_attempts,
                    "steps": params.steps,
                    "n": params.n,
                    "in_flight": terms.in_flight,
                    "price": terms.price_micros,
                    "free_quota": terms.free_quota,
                    "free_until": terms.free_until,
                    "prompt_ready": 0 if rewrite_prompt else 1,
                },
            ).fetchone()
        return _row_to_task(row)

    def _standing(self, api_key_id: str, model: str, month_start: float) -> KeyStanding:
        row = self._execute(
            f"""SELECT
                (SELECT COUNT(*) FROM tasks WHERE api_key_id = :key AND status = 'PENDING')
                    AS pending,
                (SELECT COALESCE(SUM(free_images), 0) FROM usage_ledger
                 WHERE api_key_id = :key AND model = :model) AS free_used,
                (SELECT COALESCE(SUM(n), 0) FROM tasks WHERE api_key_id = :key
                 AND model = :model AND status NOT IN {_FINAL}) AS reserved,
                (SELECT COALESCE(SUM(amount_micros), 0) FROM usage_ledger
                 WHERE api_key_id = :key AND finished_at >= :month) AS charged""",
            {"key": api_key_id, "model": model, "month": month_start},
        ).fetchone()
        return KeyStanding(
            pending=int(row["pending"]),
            free_used=int(row["free_used"]),
            reserved=int(row["reserved"]),
            month_charged_micros=int(row["charged"]),
        )

    def get_task(self, task_id: str, api_key_id: str | None = None) -> Task | None:
        """A task by id; with api_key_id, only if that key owns it."""
        sql = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id"
        if api_key_id is not None:
            sql += " AND api_key_id = :key"
        row = self._execute(sql, {"id": task_id, "key": api_key_id}).fetchone()
        return _row_to_task(row) if row else None

    def list_tasks(
        self, api_key_id: str, flt: TaskFilter, offset: int, limit: int
    ) -> tuple[int, list[Task]]:
        where = "api_key_id = :key AND created_at >= :start AND created_at <= :end"
        params: dict[str, Any] = {"key": api_key_id, "start": flt.start, "end": flt.end}
        for column, value in (
            ("model", flt.model),
            ("status", flt.status),
            ("id", flt.task_id),
            ("workspace", flt.workspace),
        ):
            if value is not None:
                where += f" AND {column} = :{column}"
                params[column] = str(value)
        total = self._execute(f"SELECT COUNT(*) AS n FROM tasks WHERE {where}", params).fetchone()
        rows = self._execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE {where} "
            "ORDER BY created_at DESC, seq DESC LIMIT :limit OFFSET :offset",
            {**params, "limit": limit, "offset": offset},
        ).fetchall()
        return int(total["n"]), [_row_to_task(r) for r in rows]

    def cancel_pending(self, task_id: str, api_key_id: str) -> bool:
        with self._transaction():
            rows = self._execute(
                f"""UPDATE tasks SET status = 'CANCELED', finished_at = {{now}}
                WHERE id = :id AND api_key_id = :key AND status = 'PENDING'
                RETURNING {_LEDGER_SOURCE}""",
                {"id": task_id, "key": api_key_id},
            ).fetchall()
            self._record_ledger(rows)
        return len(rows) == 1

    def request_cancel(self, task_id: str) -> TaskStatus | None:
        """Cancel a PENDING task now, or ask the worker of a RUNNING one to stop at its next
        step (used when a synchronous caller goes away). Returns the status it left."""
        with self._transaction():
            rows = self._execute(
                f"""UPDATE tasks SET status = 'CANCELED', finished_at = {{now}}
                WHERE id = :id AND status = 'PENDING' RETURNING {_LEDGER_SOURCE}""",
                {"id": task_id},
            ).fetchall()
            self._record_ledger(rows)
        if rows:
            return TaskStatus.CANCELED
        self._execute(
            "UPDATE tasks SET cancel_requested = 1 WHERE id = :id AND status = 'RUNNING'",
            {"id": task_id},
        )
        task = self.get_task(task_id)
        return task.status if task else None

    def claim(self, worker_id: str, models: Sequence[str], lease_seconds: float) -> Task | None:
        """Take the next PENDING task of one of `models`: RUNNING, leased to this worker.

        Keys take turns: the next task is the oldest of the key served least recently (by
        claim count, in queue_turns), so a key that floods the queue cannot starve another.
        A key whose tasks of a model already fill its in-flight limit is skipped for it."""
        if not models:
            return None
        names = {f"m{i}": m for i, m in enumerate(models)}
        placeholders = ", ".join(f":{k}" for k in names)
        with self._transaction():
            if self.dialect.claim_lock:
                self._execute(self.dialect.claim_lock)
            row = self._execute(
                f"""WITH running AS (
                    SELECT api_key_id, model, COUNT(*) AS n FROM tasks
                    WHERE status = 'RUNNING' GROUP BY api_key_id, model
                ), heads AS (
                    SELECT api_key_id, model, MIN(seq) AS seq FROM tasks
                    WHERE status = 'PENDING' AND prompt_ready = 1 AND model IN ({placeholders})
                    GROUP BY model, api_key_id
                ), next_task AS (
                    SELECT t.id FROM heads h
                    JOIN tasks t ON t.seq = h.seq
                    LEFT JOIN running r ON r.api_key_id = h.api_key_id AND r.model = h.model
                    LEFT JOIN queue_turns q ON q.api_key_id = h.api_key_id
                    WHERE COALESCE(r.n, 0) < t.in_flight
                    ORDER BY COALESCE(q.last_turn, 0), h.seq LIMIT 1
                )
                UPDATE tasks SET status = 'RUNNING', worker_id = :worker,
                    attempts = attempts + 1, lease_until = {{now}} + :lease,
                    started_at = COALESCE(started_at, {{now}}), progress_step = 0
                WHERE id = (SELECT id FROM next_task) AND status = 'PENDING'
                RETURNING {TASK_COLUMNS}""",
                {"worker": worker_id, "lease": lease_seconds, **names},
            ).fetchone()
            if row is not None:
                self._execute(
                    """INSERT INTO queue_turns (api_key_id, last_turn)
                    VALUES (:key, (SELECT COALESCE(MAX(last_turn), 0) + 1 FROM queue_turns))
                    ON CONFLICT (api_key_id) DO UPDATE SET last_turn = excluded.last_turn""",
                    {"key": row["api_key_id"]},
                )
        return _row_to_task(row) if row else None

    # -- the prompt stage (prompt_extend), before any GPU worker sees the task -------------

    def claim_prompt(self, lease_seconds: float) -> Task | None:
        """The oldest waiting task whose prompt is still to be rewritten, leased for that
        long: if its rewriter's process dies, another takes the task once the lease ends."""
        with self._transaction():
            row = self._execute(
                f"""UPDATE tasks SET prompt_lease_until = {{now}} + :lease
                WHERE id = (SELECT id FROM tasks WHERE prompt_ready = 0 AND status = 'PENDING'
                            AND (prompt_lease_until IS NULL OR prompt_lease_until < {{now}})
                            ORDER BY seq LIMIT 1)
                RETURNING {TASK_COLUMNS}""",
                {"lease": lease_seconds},
            ).fetchone()
        return _row_to_task(row) if row else None

    def set_actual_prompt(self, task_id: str, prompt: str, note: str | None) -> bool:
        """Record the prompt the pipeline will get, and let workers take the task."""
        cur = self._execute(
            """UPDATE tasks SET actual_prompt = :prompt, prompt_note = :note, prompt_ready = 1,
                prompt_lease_until = NULL
            WHERE id = :id AND prompt_ready = 0""",
            {"id": task_id, "prompt": prompt, "note": note},
        )
        return bool(cur.rowcount == 1)

    def heartbeat(self, worker_id: str, lease_seconds: float) -> set[str]:
        """Extend this worker's leases; returns the ids whose cancel was requested."""
        rows = self._execute(
            """UPDATE tasks SET lease_until = {now} + :lease
            WHERE worker_id = :worker AND status = 'RUNNING'
            RETURNING id, cancel_requested""",
            {"worker": worker_id, "lease": lease_seconds},
        ).fetchall()
        return {r["id"] for r in rows if r["cancel_requested"]}

    def set_progress(self, task_id: str, worker_id: str, attempt: int, step: int) -> bool:
        cur = self._execute(
            """UPDATE tasks SET progress_step = :step
            WHERE id = :id AND worker_id = :worker AND attempts = :attempt
              AND status = 'RUNNING'""",
            {"id": task_id, "worker": worker_id, "attempt": attempt, "step": step},
        )
        return bool(cur.rowcount == 1)

    def finish(
        self,
        task_id: str,
        worker_id: str,
        attempt: int,
        status: TaskStatus,
        results: Sequence[ImageResult] = (),
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        """Fenced by worker and attempt: False means the lease was lost and the outcome must
        be discarded (another attempt owns the task now)."""
        assert status.is_final
        with self._transaction():
            row = self._execute(
                f"""UPDATE tasks SET status = :status, results = :results, error_code = :code,
                    error_message = :message, finished_at = {{now}}, lease_until = NULL,
                    progress_step = CASE WHEN :status = 'SUCCEEDED' THEN progress_total
                                         ELSE progress_step END
                WHERE id = :id AND worker_id = :worker AND attempts = :attempt
                  AND status = 'RUNNING'
                RETURNING {_LEDGER_SOURCE}""",
                {
                    "id": task_id,
                    "worker": worker_id,
                    "attempt": attempt,
                    "status": str(status),
                    "results": json.dumps([r.to_json() for r in results]),
                    "code": error_code,
                    "message": error_message,
                },
            ).fetchone()
            if row is None:
                return False
            images = sum(1 for r in results if r.blob_key) if status == TaskStatus.SUCCEEDED else 0
            self._record_ledger([row], images)
        return True

    def _record_ledger(self, rows: Sequence[Any], images: int = 0) -> None:
        """Write finished tasks into the usage ledger (in the transaction that finished them).

        Billing (spec §4): only successful images count; the key's free images for the model
        are used first while they are valid, the rest are charged at the task's price."""
        for row in rows:
            free = 0
            if images:
                self._lock_key(row["api_key_id"])
                terms = TaskTerms(free_quota=row["free_quota"], free_until=row["free_until"])
                used = self.free_images_used(row["api_key_id"], row["model"])
                free = min(images, terms.free_left(used, now=row["finished_at"]))
            self._execute(
                """INSERT INTO usage_ledger (task_id, api_key_id, model, status, created_at,
                    finished_at, images, free_images, amount_micros)
                VALUES (:id, :key, :model, :status, :created, :finished, :images, :free,
                    :amount)
                ON CONFLICT (task_id) DO NOTHING""",
                {
                    "id": row["id"],
                    "key": row["api_key_id"],
                    "model": row["model"],
                    "status": row["status"],
                    "created": row["created_at"],
                    "finished": row["finished_at"],
                    "images": images,
                    "free": free,
                    "amount": (images - free) * row["price_micros"],
                },
            )

    def release(self, task_id: str, worker_id: str, attempt: int) -> bool:
        """Hand a task back to the queue on a clean shutdown; the attempt does not count."""
        cur = self._execute(
            """UPDATE tasks SET status = 'PENDING', worker_id = NULL, lease_until = NULL,
                attempts = attempts - 1, progress_step = 0
            WHERE id = :id AND worker_id = :worker AND attempts = :attempt
              AND status = 'RUNNING'""",
            {"id": task_id, "worker": worker_id, "attempt": attempt},
        )
        return bool(cur.rowcount == 1)

    def reap_expired_leases(self) -> list[tuple[str, TaskStatus]]:
        """RUNNING tasks whose lease ran out go back to PENDING, or end FAILED once they have
        used all their attempts (a task that keeps killing workers), or CANCELED if asked."""
        with self._transaction():
            rows = self._execute(
                f"""UPDATE tasks SET
                    status = CASE WHEN cancel_requested = 1 THEN 'CANCELED'
                                  WHEN attempts >= max_attempts THEN 'FAILED'
                                  ELSE 'PENDING' END,
                    error_code = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts
                                      THEN 'InternalError.WorkerLost' ELSE NULL END,
                    error_message = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts
                                         THEN 'The task stopped its worker on every attempt.'
                                         ELSE NULL END,
                    finished_at = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts
                                       THEN {{now}} ELSE NULL END,
                    worker_id = NULL, lease_until = NULL, progress_step = 0
                WHERE status = 'RUNNING' AND lease_until < {{now}}
                RETURNING {_LEDGER_SOURCE}"""
            ).fetchall()
            self._record_ledger([r for r in rows if TaskStatus(r["status"]).is_final])
        return [(r["id"], TaskStatus(r["status"])) for r in rows]

    def expired_task_ids(self, retention_seconds: float, limit: int = 500) -> list[str]:
        rows = self._execute(
            f"""SELECT id FROM tasks WHERE status IN {_FINAL}
            AND finished_at < {{now}} - :retention LIMIT :limit""",
            {"retention": retention_seconds, "limit": limit},
        ).fetchall()
        return [r["id"] for r in rows]

    def delete_tasks(self, task_ids: Sequence[str]) -> int:
        deleted = 0
        for task_id in task_ids:
            deleted += self._execute("DELETE FROM tasks WHERE id = :id", {"id": task_id}).rowcount
        return deleted

    # -- API keys -------------------------------------------------------------------------

    def insert_key(
        self,
        key_id: str,
        name: str,
        prefix: str,
        secret_hash: str,
        settings: KeySettings | None = None,
    ) -> ApiKey:
        row = self._execute(
            f"""INSERT INTO api_keys (id, name, prefix, secret_hash, created_at, settings)
            VALUES (:id, :name, :prefix, :hash, {{now}}, :settings)
            RETURNING {KEY_COLUMNS}""",
            {
                "id": key_id,
                "name": name,
                "prefix": prefix,
                "hash": secret_hash,
                "settings": (settings or KeySettings()).dumps(),
            },
        ).fetchone()
        return _row_to_key(row)

    def find_key(self, secret_hash: str) -> ApiKey | None:
        row = self._execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = :hash", {"hash": secret_hash}
        ).fetchone()
        return _row_to_key(row) if row else None

    def get_key(self, key_id: str) -> ApiKey | None:
        row = self._execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = :id", {"id": key_id}
        ).fetchone()
        return _row_to_key(row) if row else None

    def touch_key(self, key_id: str, min_interval: float) -> None:
        """Record a use; at most once per min_interval, so requests do not all write."""
        self._execute(
            """UPDATE api_keys SET last_used_at = {now} WHERE id = :id
            AND (last_used_at IS NULL OR last_used_at < {now} - :interval)""",
            {"id": key_id, "interval": min_interval},
        )

    def revoke_key(self, key_id: str) -> bool:
        cur = self._execute(
            "UPDATE api_keys SET revoked_at = {now} WHERE id = :id AND revoked_at IS NULL",
            {"id": key_id},
        )
        return bool(cur.rowcount == 1)

    def update_key_settings(self, key_id: str, settings: KeySettings) -> ApiKey | None:
        row = self._execute(
            f"UPDATE api_keys SET settings = :settings WHERE id = :id RETURNING {KEY_COLUMNS}",
            {"id": key_id, "settings": settings.dumps()},
        ).fetchone()
        return _row_to_key(row) if row else None

    def list_keys(self) -> list[ApiKey]:
        rows = self._execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at").fetchall()
        return [_row_to_key(r) for r in rows]

    # -- rate limits ----------------------------------------------------------------------

    def take_token(self, bucket: str, rate: float, burst: float) -> bool:
        """A token bucket in one statement: `burst` tokens, refilled at `rate` per second.
        True if a token was taken. The state lives in the database, so every API process
        sharing it enforces one limit."""
        row = self._execute(
            """INSERT INTO rate_buckets (bucket, tokens, updated_at)
            VALUES (:bucket, :burst - 1, {now})
            ON CONFLICT (bucket) DO UPDATE SET
                tokens = {least}(:burst, rate_buckets.tokens
                    + ({now} - rate_buckets.updated_at) * :rate) - 1,
                updated_at = {now}
            WHERE {least}(:burst, rate_buckets.tokens
                + ({now} - rate_buckets.updated_at) * :rate) >= 1
            RETURNING tokens""",
            {"bucket": bucket, "rate": rate, "burst": burst},
        ).fetchone()
        return row is not None

    # -- usage ----------------------------------------------------------------------------

    def ledger(
        self, api_key_id: str | None = None, model: str | None = None, since: float = 0.0
    ) -> list[LedgerEntry]:
        where, params = _usage_filter(api_key_id, model, since)
        rows = self._execute(
            f"""SELECT task_id, api_key_id, model, status, created_at, finished_at, images,
                free_images, amount_micros FROM usage_ledger WHERE {where}
            ORDER BY created_at""",
            params,
        ).fetchall()
        return [
            LedgerEntry(
                task_id=r["task_id"],
                api_key_id=r["api_key_id"],
                model=r["model"],
                status=TaskStatus(r["status"]),
                created_at=r["created_at"],
                finished_at=r["finished_at"],
                images=r["images"],
                free_images=r["free_images"],
                amount_micros=r["amount_micros"],
            )
            for r in rows
        ]

    def unfinished(
        self, api_key_id: str | None = None, model: str | None = None, since: float = 0.0
    ) -> list[tuple[str, str, float]]:
        """(key id, model, created_at) of every task still PENDING or RUNNING."""
        where, params = _usage_filter(api_key_id, model, since)
        rows = self._execute(
            f"SELECT api_key_id, model, created_at FROM tasks WHERE {where} "
            f"AND status NOT IN {_FINAL}",
            params,
        ).fetchall()
        return [(r["api_key_id"], r["model"], r["created_at"]) for r in rows]

    def free_images_used(self, api_key_id: str, model: str) -> int:
        row = self._execute(
            """SELECT COALESCE(SUM(free_images), 0) AS used FROM usage_ledger
            WHERE api_key_id = :key AND model = :model""",
            {"key": api_key_id, "model": model},
        ).fetchone()
        return int(row["used"])


def _usage_filter(
    api_key_id: str | None, model: str | None, since: float
) -> tuple[str, dict[str, Any]]:
    where = "created_at >= :since"
    params: dict[str, Any] = {"since": since}
    if api_key_id is not None:
        where += " AND api_key_id = :key"
        params["key"] = api_key_id
    if model is not None:
        where += " AND model = :model"
        params["model"] = model
    return where, params
