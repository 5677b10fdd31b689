"""The workers table (tasks.ports.WorkerPresence) and what /ready and /metrics read from the
database (tasks.ports.ServiceState): live workers, tasks by status, the queue per model.

A worker's row is written by its heartbeat and deleted when it stops cleanly; a killed
worker's row stays, and only its age (last_seen, the database's clock) says it is gone. Rows
older than a day are deleted by the next beat, so the table holds no long-dead workers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from imagesynth.db.database import Database
from imagesynth.tasks.ports import FailedTask, WorkerSeen

# A worker not seen for this long is certainly gone: its row is dropped at the next beat.
_FORGET_AFTER_SECONDS = 86400.0


class SqlWorkers:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tasks.ports.WorkerPresence -------------------------------------------------------

    def beat(self, worker_id: str, models: Sequence[str]) -> None:
        with self.db.transaction():
            self.db.execute(
                """INSERT INTO workers (worker_id, models, last_seen) VALUES (:id, :models, {now})
                ON CONFLICT (worker_id) DO UPDATE SET models = excluded.models,
                    last_seen = excluded.last_seen""",
                {"id": worker_id, "models": json.dumps(list(models))},
            )
            self.db.execute(
                "DELETE FROM workers WHERE last_seen < {now} - :forget",
                {"forget": _FORGET_AFTER_SECONDS},
            )

    def leave(self, worker_id: str) -> None:
        self.db.execute("DELETE FROM workers WHERE worker_id = :id", {"id": worker_id})

    # -- tasks.ports.ServiceState ---------------------------------------------------------

    def ping(self) -> None:
        self.db.execute("SELECT 1 AS one").fetchone()

    def _live_rows(self, window_seconds: float) -> list[list[str]]:
        rows = self.db.execute(
            "SELECT models FROM workers WHERE last_seen >= {now} - :window",
            {"window": window_seconds},
        ).fetchall()
        return [list(json.loads(row["models"])) for row in rows]

    def live_workers(self, window_seconds: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for models in self._live_rows(window_seconds):
            for model in models:
                counts[model] = counts.get(model, 0) + 1
        return counts

    def worker_count(self, window_seconds: float) -> int:
        return len(self._live_rows(window_seconds))

    def task_counts(self) -> dict[tuple[str, str], int]:
        rows = self.db.execute(
            "SELECT model, status, COUNT(*) AS n FROM tasks GROUP BY model, status"
        ).fetchall()
        return {(row["model"], row["status"]): int(row["n"]) for row in rows}

    def queue_depths(self) -> dict[str, tuple[int, float]]:
        rows = self.db.execute(
            """SELECT model, COUNT(*) AS n, {now} - MIN(created_at) AS oldest FROM tasks
            WHERE status = 'PENDING' GROUP BY model"""
        ).fetchall()
        return {row["model"]: (int(row["n"]), max(float(row["oldest"]), 0.0)) for row in rows}

    def workers_seen(self, window_seconds: float) -> list[WorkerSeen]:
        rows = self.db.execute(
            """SELECT worker_id, models, {now} - last_seen AS age FROM workers
            WHERE last_seen >= {now} - :window ORDER BY last_seen DESC, worker_id""",
            {"window": window_seconds},
        ).fetchall()
        return [
            WorkerSeen(
                worker_id=row["worker_id"],
                models=tuple(json.loads(row["models"])),
                seconds_ago=max(float(row["age"]), 0.0),
            )
            for row in rows
        ]

    def recent_failures(self, limit: int) -> list[FailedTask]:
        rows = self.db.execute(
            """SELECT id, api_key_id, model, error_code, error_message, created_at, finished_at
            FROM tasks WHERE status = 'FAILED'
            ORDER BY finished_at DESC, created_at DESC LIMIT :limit""",
            {"limit": limit},
        ).fetchall()
        return [
            FailedTask(
                task_id=row["id"],
                api_key_id=row["api_key_id"],
                model=row["model"],
                code=row["error_code"] or "InternalError",
                message=row["error_message"] or "",
                created_at=float(row["created_at"]),
                finished_at=None if row["finished_at"] is None else float(row["finished_at"]),
            )
            for row in rows
        ]
