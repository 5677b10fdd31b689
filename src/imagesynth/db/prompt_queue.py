"""The prompt stage's lease on tasks waiting for prompt_extend (tasks.ports.PromptQueue):
no GPU worker takes such a task until its prompt is set."""

from __future__ import annotations

from imagesynth.db.database import Database
from imagesynth.db.rows import TASK_COLUMNS, row_to_task
from imagesynth.tasks.events import CLAIMABLE
from imagesynth.tasks.models import Task


class SqlPromptQueue:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim_prompt(self, lease_seconds: float) -> Task | None:
        """The oldest waiting task whose prompt is still to be rewritten, leased for that
        long: if its rewriter's process dies, another takes the task once the lease ends."""
        with self.db.transaction():
            row = self.db.execute(
                f"""UPDATE tasks SET prompt_lease_until = {{now}} + :lease
                WHERE id = (SELECT id FROM tasks WHERE prompt_ready = 0 AND status = 'PENDING'
                            AND (prompt_lease_until IS NULL OR prompt_lease_until < {{now}})
                            ORDER BY seq LIMIT 1)
                RETURNING {TASK_COLUMNS}""",
                {"lease": lease_seconds},
            ).fetchone()
        return row_to_task(row) if row else None

    def set_actual_prompt(self, task_id: str, prompt: str, note: str | None) -> bool:
        """Record the prompt the pipeline will get, and let workers take the task."""
        rows = self.db.execute(
            """UPDATE tasks SET actual_prompt = :prompt, prompt_note = :note, prompt_ready = 1,
                prompt_lease_until = NULL
            WHERE id = :id AND prompt_ready = 0
            RETURNING model""",
            {"id": task_id, "prompt": prompt, "note": note},
        ).fetchall()  # all: an unfinished SQLite statement would hold its write lock
        if not rows:
            return False
        self.db.notify((CLAIMABLE, rows[0]["model"]))
        return True
