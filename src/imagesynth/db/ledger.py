"""The usage ledger: one row per finished task, written in the transaction that finished it,
kept after the task itself expires. Billing reads it (free images used) and so does usage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imagesynth.accounts.models import KeyStanding, LedgerEntry, TaskTerms
from imagesynth.db.database import FINAL_STATUSES, Database
from imagesynth.domain import TaskStatus


def record_finished(db: Database, rows: Sequence[Any], images: int = 0) -> None:
    """Write finished tasks (rows with rows.LEDGER_SOURCE's columns) into the ledger; call it
    inside the transaction that finished them.

    Billing (spec §4): only successful images count; the key's free images for the model
    are used first while they are valid, the rest are charged at the task's price."""
    for row in rows:
        free = 0
        terms = TaskTerms(free_quota=row["free_quota"], free_until=row["free_until"])
        # Free images used so far matter only while some are left: past the free period (or
        # without one) the key's lock and the sum are two statements saved per task.
        if images and terms.free_left(0, now=row["finished_at"]) > 0:
            db.lock_key(row["api_key_id"])
            used = free_images_used(db, row["api_key_id"], row["model"])
            free = min(images, terms.free_left(used, now=row["finished_at"]))
        db.execute(
            """INSERT INTO usage_ledger (task_id, api_key_id, model, status, created_at,
                finished_at, images, free_images, amount_micros)
            VALUES (:id, :key, :model, :status, :created, :finished, :images, :free, :amount)
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


def free_images_used(db: Database, api_key_id: str, model: str) -> int:
    row = db.execute(
        """SELECT COALESCE(SUM(free_images), 0) AS used FROM usage_ledger
        WHERE api_key_id = :key AND model = :model""",
        {"key": api_key_id, "model": model},
    ).fetchone()
    return int(row["used"])


def key_standing(db: Database, api_key_id: str, model: str, month_start: float) -> KeyStanding:
    """The key's standing for a new task of `model`; read it under the key's lock."""
    row = db.execute(
        f"""SELECT
            (SELECT COUNT(*) FROM tasks WHERE api_key_id = :key AND status = 'PENDING')
                AS pending,
            (SELECT COALESCE(SUM(free_images), 0) FROM usage_ledger
             WHERE api_key_id = :key AND model = :model) AS free_used,
            (SELECT COALESCE(SUM(n), 0) FROM tasks WHERE api_key_id = :key
             AND model = :model AND status NOT IN {FINAL_STATUSES}) AS reserved,
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


class SqlLedger:
    """accounts.ports.Ledger in SQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def entries(
        self, api_key_id: str | None = None, model: str | None = None, since: float = 0.0
    ) -> list[LedgerEntry]:
        where, params = _usage_filter(api_key_id, model, since)
        rows = self.db.execute(
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
        rows = self.db.execute(
            f"SELECT api_key_id, model, created_at FROM tasks WHERE {where} "
            f"AND status NOT IN {FINAL_STATUSES}",
            params,
        ).fetchall()
        return [(r["api_key_id"], r["model"], r["created_at"]) for r in rows]

    def free_images_used(self, api_key_id: str, model: str) -> int:
        return free_images_used(self.db, api_key_id, model)


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
