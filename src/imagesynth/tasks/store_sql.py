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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagesynth.tasks.models import (
    ApiKey,
    GenerationParams,
    ImageResult,
    Task,
    TaskFilter,
    TaskStatus,
)

TASK_COLUMNS = (
    "id, seq, api_key_id, model, params, status, request_id, workspace, attempts, max_attempts, "
    "worker_id, lease_until, cancel_requested, created_at, started_at, finished_at, "
    "progress_step, progress_total, results, error_code, error_message"
)

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
    error_message TEXT
);
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks (model, seq) WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS tasks_running ON tasks (lease_until) WHERE status = 'RUNNING';
CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (api_key_id, created_at);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL,
    last_used_at {real},
    revoked_at {real}
);
"""

_FINAL = "('SUCCEEDED', 'FAILED', 'CANCELED')"
_PG_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7239512014)"  # an arbitrary constant key


class Dialect(Protocol):
    name: str
    now: str
    skip_locked: str
    next_seq: str

    def connect(self) -> Any: ...
    def translate(self, sql: str) -> str: ...
    def schema(self) -> list[str]: ...


@dataclass
class SqliteDialect:
    path: Path
    name: str = "sqlite"
    # julianday() has sub-millisecond resolution; unixepoch('subsec') needs SQLite 3.42.
    now: str = "((julianday('now') - 2440587.5) * 86400.0)"
    skip_locked: str = ""
    # Safe without a sequence: inserts hold SQLite's single write lock.
    next_seq: str = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks)"

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def translate(self, sql: str) -> str:
        return sql

    def schema(self) -> list[str]:
        ddl = _SCHEMA.format(serial="INTEGER NOT NULL", real="REAL")
        return [s for s in ddl.split(";") if s.strip()]


@dataclass
class PostgresDialect:
    dsn: str
    name: str = "postgresql"
    now: str = "(extract(epoch from clock_timestamp())::double precision)"
    skip_locked: str = "FOR UPDATE SKIP LOCKED"
    next_seq: str = "nextval('tasks_seq_seq')"

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
    )


def _row_to_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
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
            .replace("{skip_locked}", self.dialect.skip_locked)
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
    ) -> Task:
        with self._transaction():
            # seq orders the queue (FIFO within a model).
            row = self._execute(
                f"""INSERT INTO tasks (id, seq, api_key_id, model, params, status, request_id,
                    workspace, max_attempts, created_at, progress_total)
                VALUES (:id, {{next_seq}}, :key, :model,
                    :params, 'PENDING', :request_id, :workspace, :max_attempts, {{now}}, :steps)
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
                },
            ).fetchone()
        return _row_to_task(row)

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
        cur = self._execute(
            """UPDATE tasks SET status = 'CANCELED', finished_at = {now}
            WHERE id = :id AND api_key_id = :key AND status = 'PENDING'""",
            {"id": task_id, "key": api_key_id},
        )
        return bool(cur.rowcount == 1)

    def request_cancel(self, task_id: str) -> TaskStatus | None:
        """Cancel a PENDING task now, or ask the worker of a RUNNING one to stop at its next
        step (used when a synchronous caller goes away). Returns the status it left."""
        cur = self._execute(
            "UPDATE tasks SET status = 'CANCELED', finished_at = {now} "
            "WHERE id = :id AND status = 'PENDING'",
            {"id": task_id},
        )
        if cur.rowcount == 1:
            return TaskStatus.CANCELED
        self._execute(
            "UPDATE tasks SET cancel_requested = 1 WHERE id = :id AND status = 'RUNNING'",
            {"id": task_id},
        )
        task = self.get_task(task_id)
        return task.status if task else None

    def claim(self, worker_id: str, models: Sequence[str], lease_seconds: float) -> Task | None:
        """Take the oldest PENDING task of one of `models`: RUNNING, leased to this worker."""
        if not models:
            return None
        names = {f"m{i}": m for i, m in enumerate(models)}
        placeholders = ", ".join(f":{k}" for k in names)
        with self._transaction():
            row = self._execute(
                f"""UPDATE tasks SET status = 'RUNNING', worker_id = :worker,
                    attempts = attempts + 1, lease_until = {{now}} + :lease,
                    started_at = COALESCE(started_at, {{now}}), progress_step = 0
                WHERE id = (SELECT id FROM tasks WHERE status = 'PENDING'
                            AND model IN ({placeholders}) ORDER BY seq LIMIT 1 {{skip_locked}})
                  AND status = 'PENDING'
                RETURNING {TASK_COLUMNS}""",
                {"worker": worker_id, "lease": lease_seconds, **names},
            ).fetchone()
        return _row_to_task(row) if row else None

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
        cur = self._execute(
            """UPDATE tasks SET status = :status, results = :results, error_code = :code,
                error_message = :message, finished_at = {now}, lease_until = NULL,
                progress_step = CASE WHEN :status = 'SUCCEEDED' THEN progress_total
                                     ELSE progress_step END
            WHERE id = :id AND worker_id = :worker AND attempts = :attempt
              AND status = 'RUNNING'""",
            {
                "id": task_id,
                "worker": worker_id,
                "attempt": attempt,
                "status": str(status),
                "results": json.dumps([r.to_json() for r in results]),
                "code": error_code,
                "message": error_message,
            },
        )
        return bool(cur.rowcount == 1)

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
        rows = self._execute(
            """UPDATE tasks SET
                status = CASE WHEN cancel_requested = 1 THEN 'CANCELED'
                              WHEN attempts >= max_attempts THEN 'FAILED'
                              ELSE 'PENDING' END,
                error_code = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts
                                  THEN 'InternalError.WorkerLost' ELSE NULL END,
                error_message = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts
                                     THEN 'The task stopped its worker on every attempt.'
                                     ELSE NULL END,
                finished_at = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts
                                   THEN {now} ELSE NULL END,
                worker_id = NULL, lease_until = NULL, progress_step = 0
            WHERE status = 'RUNNING' AND lease_until < {now}
            RETURNING id, status"""
        ).fetchall()
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

    def insert_key(self, key_id: str, name: str, prefix: str, secret_hash: str) -> ApiKey:
        row = self._execute(
            """INSERT INTO api_keys (id, name, prefix, secret_hash, created_at)
            VALUES (:id, :name, :prefix, :hash, {now})
            RETURNING id, name, prefix, created_at, last_used_at, revoked_at""",
            {"id": key_id, "name": name, "prefix": prefix, "hash": secret_hash},
        ).fetchone()
        return _row_to_key(row)

    def find_key(self, secret_hash: str) -> ApiKey | None:
        row = self._execute(
            """SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys
            WHERE secret_hash = :hash""",
            {"hash": secret_hash},
        ).fetchone()
        return _row_to_key(row) if row else None

    def touch_key(self, key_id: str) -> None:
        self._execute("UPDATE api_keys SET last_used_at = {now} WHERE id = :id", {"id": key_id})

    def list_keys(self) -> list[ApiKey]:
        rows = self._execute(
            """SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys
            ORDER BY created_at"""
        ).fetchall()
        return [_row_to_key(r) for r in rows]
