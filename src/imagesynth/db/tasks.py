"""The tasks table as clients and housekeeping see it (tasks.ports.TaskStore and
ExpiringTasks): queue a task under the key's quota, read, list, cancel, and forget after the
retention period. Every state change is one conditional UPDATE whose row count says whether
it happened (docs/task-queue.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from imagesynth.accounts.models import KeyStanding, TaskTerms
from imagesynth.db.database import FINAL_STATUSES, Database
from imagesynth.db.ledger import key_standing, record_finished
from imagesynth.db.rows import LEDGER_SOURCE, TASK_COLUMNS, row_to_task
from imagesynth.db.webhooks import enqueue_ended
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.tasks.events import CLAIMABLE, ENDED, REWRITE
from imagesynth.tasks.models import Task, TaskFilter


class SqlTaskStore:
    def __init__(self, db: Database) -> None:
        self.db = db

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
        callback_url: str | None = None,
    ) -> Task:
        """Queue a task. `admit` sees the key's standing under the key's lock and raises to
        refuse the task, so quota checks and the insert are one atomic step even with
        several API processes on one database. With `rewrite_prompt`, no worker takes the
        task until the prompt stage has rewritten its prompt (PromptQueue.set_actual_prompt).
        `callback_url` is told of the task's end too (db/webhooks.py)."""
        terms = terms or TaskTerms()
        with self.db.transaction():
            self.db.lock_key(api_key_id)
            if admit is not None:
                admit(key_standing(self.db, api_key_id, model, month_start))
            # seq orders the queue (FIFO within a key; keys take turns, see queue.claim()).
            row = self.db.execute(
                f"""INSERT INTO tasks (id, seq, api_key_id, model, params, status, request_id,
                    workspace, max_attempts, created_at, progress_total, n, in_flight,
                    price_micros, free_quota, free_until, prompt_ready, batch_key, callback_url)
                VALUES (:id, {{next_seq}}, :key, :model,
                    :params, 'PENDING', :request_id, :workspace, :max_attempts, {{now}}, :steps,
                    :n, :in_flight, :price, :free_quota, :free_until, :prompt_ready, :batch_key,
                    :callback_url)
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
                    "batch_key": params.batch_key,
                    "callback_url": callback_url,
                },
            ).fetchone()
            self.db.notify((REWRITE if rewrite_prompt else CLAIMABLE, model))
        return row_to_task(row)

    def get_task(self, task_id: str, api_key_id: str | None = None) -> Task | None:
        """A task by id; with api_key_id, only if that key owns it."""
        sql = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id"
        if api_key_id is not None:
            sql += " AND api_key_id = :key"
        row = self.db.execute(sql, {"id": task_id, "key": api_key_id}).fetchone()
        return row_to_task(row) if row else None

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
        total = self.db.execute(f"SELECT COUNT(*) AS n FROM tasks WHERE {where}", params).fetchone()
        rows = self.db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE {where} "
            "ORDER BY created_at DESC, seq DESC LIMIT :limit OFFSET :offset",
            {**params, "limit": limit, "offset": offset},
        ).fetchall()
        return int(total["n"]), [row_to_task(r) for r in rows]

    def cancel_pending(self, task_id: str, api_key_id: str) -> bool:
        with self.db.transaction():
            rows = self.db.execute(
                f"""UPDATE tasks SET status = 'CANCELED', finished_at = {{now}}
                WHERE id = :id AND api_key_id = :key AND status = 'PENDING'
                RETURNING {LEDGER_SOURCE}""",
                {"id": task_id, "key": api_key_id},
            ).fetchall()
            record_finished(self.db, rows)
            enqueue_ended(self.db, [row["id"] for row in rows])
            self.db.notify(*((ENDED, row["id"]) for row in rows))
        return len(rows) == 1

    def request_cancel(self, task_id: str) -> TaskStatus | None:
        """Cancel a PENDING task now, or ask the worker of a RUNNING one to stop at its next
        step (used when a synchronous caller goes away). Returns the status it left."""
        with self.db.transaction():
            rows = self.db.execute(
                f"""UPDATE tasks SET status = 'CANCELED', finished_at = {{now}}
                WHERE id = :id AND status = 'PENDING' RETURNING {LEDGER_SOURCE}""",
                {"id": task_id},
            ).fetchall()
            record_finished(self.db, rows)
            enqueue_ended(self.db, [row["id"] for row in rows])
            self.db.notify(*((ENDED, row["id"]) for row in rows))
        if rows:
            return TaskStatus.CANCELED
        self.db.execute(
            "UPDATE tasks SET cancel_requested = 1 WHERE id = :id AND status = 'RUNNING'",
            {"id": task_id},
        )
        task = self.get_task(task_id)
        return task.status if task else None

    def expired_task_ids(self, retention_seconds: float, limit: int = 500) -> list[str]:
        rows = self.db.execute(
            f"""SELECT id FROM tasks WHERE status IN {FINAL_STATUSES}
            AND finished_at < {{now}} - :retention LIMIT :limit""",
            {"retention": retention_seconds, "limit": limit},
        ).fetchall()
        return [r["id"] for r in rows]

    def delete_tasks(self, task_ids: Sequence[str]) -> int:
        deleted = 0
        for task_id in task_ids:
            cur = self.db.execute("DELETE FROM tasks WHERE id = :id", {"id": task_id})
            deleted += int(cur.rowcount)
        return deleted
