"""The tasks table as the queue workers see it (tasks.ports.TaskQueue): claim, heartbeat,
progress, finish (fenced) and release, and the reaper of expired leases
(tasks.ports.LeaseReaper). The protocol is in docs/task-queue.md."""

from __future__ import annotations

import json
from collections.abc import Sequence

from imagesynth.db.database import Database
from imagesynth.db.ledger import record_finished
from imagesynth.db.rows import LEDGER_SOURCE, TASK_COLUMNS, row_to_task
from imagesynth.db.webhooks import enqueue_ended
from imagesynth.domain import TaskStatus
from imagesynth.errors import FailureCode
from imagesynth.tasks.events import CLAIMABLE, ENDED, PROGRESS
from imagesynth.tasks.models import ImageResult, Task

LOST = FailureCode.WORKER_LOST


class SqlTaskQueue:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(
        self,
        worker_id: str,
        models: Sequence[str],
        lease_seconds: float,
        *,
        batch_key: str | None = None,
        max_n: int | None = None,
    ) -> Task | None:
        """Take the next PENDING task of one of `models`: RUNNING, leased to this worker.

        Keys take turns: the next task is the oldest of the key served least recently (by
        claim count, in queue_turns), so a key that floods the queue cannot starve another.
        A key whose tasks of a model already fill its in-flight limit is skipped for it.
        With batch_key (and max_n), only a task that may join that batch is taken."""
        if not models:
            return None
        names = {f"m{i}": m for i, m in enumerate(models)}
        placeholders = ", ".join(f":{k}" for k in names)
        joining = ""
        if batch_key is not None:
            joining = " AND batch_key = :batch_key AND n <= :max_n"
        with self.db.transaction():
            self.db.lock(self.db.dialect.claim_lock)
            row = self.db.execute(
                f"""WITH running AS (
                    SELECT api_key_id, model, COUNT(*) AS n FROM tasks
                    WHERE status = 'RUNNING' GROUP BY api_key_id, model
                ), heads AS (
                    SELECT api_key_id, model, MIN(seq) AS seq FROM tasks
                    WHERE status = 'PENDING' AND prompt_ready = 1 AND model IN ({placeholders})
                      {joining}
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
                    started_at = COALESCE(started_at, {{now}}), progress_step = 0, previews_made = 0
                WHERE id = (SELECT id FROM next_task) AND status = 'PENDING'
                RETURNING {TASK_COLUMNS}""",
                {
                    "worker": worker_id,
                    "lease": lease_seconds,
                    "batch_key": batch_key,
                    "max_n": max_n if max_n is not None else 1 << 30,
                    **names,
                },
            ).fetchone()
            if row is not None:
                self.db.execute(
                    """INSERT INTO queue_turns (api_key_id, last_turn)
                    VALUES (:key, (SELECT COALESCE(MAX(last_turn), 0) + 1 FROM queue_turns))
                    ON CONFLICT (api_key_id) DO UPDATE SET last_turn = excluded.last_turn""",
                    {"key": row["api_key_id"]},
                )
        return row_to_task(row) if row else None

    # -- the prompt stage (prompt_extend), before any GPU worker sees the task -------------

    def heartbeat(self, worker_id: str, lease_seconds: float) -> set[str]:
        """Extend this worker's leases; returns the ids whose cancel was requested."""
        rows = self.db.execute(
            """UPDATE tasks SET lease_until = {now} + :lease
            WHERE worker_id = :worker AND status = 'RUNNING'
            RETURNING id, cancel_requested""",
            {"worker": worker_id, "lease": lease_seconds},
        ).fetchall()
        return {r["id"] for r in rows if r["cancel_requested"]}

    def set_progress(
        self, task_id: str, worker_id: str, attempt: int, step: int, previews: int | None = None
    ) -> bool:
        with self.db.transaction():
            cur = self.db.execute(
                """UPDATE tasks SET progress_step = :step,
                    previews_made = COALESCE(:previews, previews_made)
                WHERE id = :id AND worker_id = :worker AND attempts = :attempt
                  AND status = 'RUNNING'""",
                {
                    "id": task_id,
                    "worker": worker_id,
                    "attempt": attempt,
                    "step": step,
                    "previews": previews,
                },
            )
            moved = bool(cur.rowcount == 1)
            if moved:
                self.db.notify((PROGRESS, task_id))
        return moved

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
        with self.db.transaction():
            row = self.db.execute(
                f"""UPDATE tasks SET status = :status, results = :results, error_code = :code,
                    error_message = :message, finished_at = {{now}}, lease_until = NULL,
                    progress_step = CASE WHEN :status = 'SUCCEEDED' THEN progress_total
                                         ELSE progress_step END
                WHERE id = :id AND worker_id = :worker AND attempts = :attempt
                  AND status = 'RUNNING'
                RETURNING {LEDGER_SOURCE}""",
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
            record_finished(self.db, [row], images)
            enqueue_ended(self.db, [task_id])
            # Its end, and its key's in-flight slot came free.
            self.db.notify((ENDED, task_id), (CLAIMABLE, row["model"]))
        return True

    def release(self, task_id: str, worker_id: str, attempt: int) -> bool:
        """Hand a task back to the queue on a clean shutdown; the attempt does not count."""
        rows = self.db.execute(
            """UPDATE tasks SET status = 'PENDING', worker_id = NULL, lease_until = NULL,
                attempts = attempts - 1, progress_step = 0, previews_made = 0
            WHERE id = :id AND worker_id = :worker AND attempts = :attempt
              AND status = 'RUNNING'
            RETURNING model""",
            {"id": task_id, "worker": worker_id, "attempt": attempt},
        ).fetchall()  # all: an unfinished SQLite statement would hold its write lock
        if not rows:
            return False
        self.db.notify((CLAIMABLE, rows[0]["model"]))  # a hint: after the update is soon enough
        return True

    def reap_expired_leases(self) -> list[tuple[str, TaskStatus]]:
        """RUNNING tasks whose lease ran out go back to PENDING, or end FAILED once they have
        used all their attempts (a task that keeps killing workers), or CANCELED if asked."""
        with self.db.transaction():
            rows = self.db.execute(
                f"""UPDATE tasks SET
                    status = CASE WHEN cancel_requested = 1 THEN 'CANCELED'
                                  WHEN attempts >= max_attempts THEN 'FAILED'
                                  ELSE 'PENDING' END,
                    error_code = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts
                                      THEN :lost ELSE NULL END,
                    error_message = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts
                                         THEN :lost_message
                                         ELSE NULL END,
                    finished_at = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts
                                       THEN {{now}} ELSE NULL END,
                    worker_id = NULL, lease_until = NULL, progress_step = 0, previews_made = 0
                WHERE status = 'RUNNING' AND lease_until < {{now}}
                RETURNING {LEDGER_SOURCE}""",
                {
                    "lost": str(FailureCode.WORKER_LOST),
                    "lost_message": FailureCode.WORKER_LOST.message,
                },
            ).fetchall()
            ended = [r for r in rows if TaskStatus(r["status"]).is_final]
            record_finished(self.db, ended)
            enqueue_ended(self.db, [r["id"] for r in ended])
            self.db.notify(
                *((ENDED, r["id"]) for r in rows if TaskStatus(r["status"]).is_final),
                *((CLAIMABLE, model) for model in {r["model"] for r in rows}),
            )
        return [(r["id"], TaskStatus(r["status"])) for r in rows]
