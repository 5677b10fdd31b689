"""The webhook tables (tasks.webhooks.WebhookStore): endpoints, the keys' callback secrets, and
the outbox of deliveries with their attempts' log (docs/webhooks.md).

`enqueue_ended` runs inside every transaction that ends tasks (db/queue.py, db/tasks.py), so a
task's end and its deliveries commit together: an end is never announced without its
deliveries, and a crash cannot lose them. Delivery ids are derived from the task and the
destination, so enqueueing twice is a no-op (ON CONFLICT DO NOTHING)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from imagesynth.db.database import Database
from imagesynth.tasks.webhooks import (
    DELIVERED,
    FAILED,
    PENDING,
    Attempt,
    AttemptOutcome,
    Delivery,
    Endpoint,
    new_secret,
)

_DELIVERY_COLUMNS = (
    "d.id, d.task_id, d.api_key_id, d.endpoint_id, d.url, d.event, d.status, d.attempts, "
    "d.created_at, d.next_at, d.finished_at, d.body, d.last_error"
)


def enqueue_ended(db: Database, task_ids: Sequence[str]) -> None:
    """The outbox rows of tasks that just ended: one per endpoint of the task's key that wants
    the event, and one for the task's own callback URL. Call it inside the transaction that
    ended them, after the UPDATE (the rows are read back from the tasks table)."""
    if not task_ids:
        return
    names = {f"t{i}": task_id for i, task_id in enumerate(task_ids)}
    ids = ", ".join(f":{name}" for name in names)
    event = "'task.' || lower(t.status)"
    db.execute(
        f"""INSERT INTO webhook_deliveries (id, task_id, api_key_id, endpoint_id, url, event,
            status, created_at, next_at)
        SELECT 'msg_' || t.id || '_' || e.id, t.id, t.api_key_id, e.id, e.url, {event},
            'PENDING', {{now}}, {{now}}
        FROM tasks t JOIN webhook_endpoints e ON e.api_key_id = t.api_key_id
        WHERE t.id IN ({ids})
          AND t.status IN ('SUCCEEDED', 'FAILED', 'CANCELED')
          AND (e.events IS NULL OR e.events LIKE :wild || ',' || {event} || ',' || :wild)
        ON CONFLICT (id) DO NOTHING""",
        {**names, "wild": "%"},  # a parameter: psycopg would read a literal % as a placeholder
    )
    db.execute(
        f"""INSERT INTO webhook_deliveries (id, task_id, api_key_id, endpoint_id, url, event,
            status, created_at, next_at)
        SELECT 'msg_' || t.id, t.id, t.api_key_id, NULL, t.callback_url, {event},
            'PENDING', {{now}}, {{now}}
        FROM tasks t
        WHERE t.id IN ({ids}) AND t.callback_url IS NOT NULL
          AND t.status IN ('SUCCEEDED', 'FAILED', 'CANCELED')
        ON CONFLICT (id) DO NOTHING""",
        names,
    )


def _delivery(row: Any, log: Sequence[Attempt] = (), secret: str | None = None) -> Delivery:
    return Delivery(
        id=row["id"],
        task_id=row["task_id"],
        api_key_id=row["api_key_id"],
        endpoint_id=row["endpoint_id"],
        url=row["url"],
        event=row["event"],
        status=row["status"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        next_at=row["next_at"],
        finished_at=row["finished_at"],
        body=row["body"],
        last_error=row["last_error"],
        secret=secret,
        log=tuple(log),
    )


def _endpoint(row: Any) -> Endpoint:
    events = row["events"]
    return Endpoint(
        id=row["id"],
        api_key_id=row["api_key_id"],
        url=row["url"],
        events=tuple(e for e in events.split(",") if e) if events else None,
        created_at=row["created_at"],
        secret=row["secret"],
    )


class SqlWebhooks:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- endpoints and secrets ------------------------------------------------------------

    def add_endpoint(
        self, api_key_id: str, url: str, events: Sequence[str] | None, secret: str
    ) -> Endpoint:
        row = self.db.execute(
            """INSERT INTO webhook_endpoints (id, api_key_id, url, events, secret, created_at)
            VALUES (:id, :key, :url, :events, :secret, {now})
            RETURNING id, api_key_id, url, events, secret, created_at""",
            {
                "id": "ep_" + uuid.uuid4().hex[:16],
                "key": api_key_id,
                "url": url,
                # ",a,b,": enqueue_ended matches one event with LIKE '%,<event>,%'.
                "events": f",{','.join(events)}," if events else None,
                "secret": secret,
            },
        ).fetchone()
        return _endpoint(row)

    def endpoints(self, api_key_id: str) -> list[Endpoint]:
        rows = self.db.execute(
            """SELECT id, api_key_id, url, events, secret, created_at FROM webhook_endpoints
            WHERE api_key_id = :key ORDER BY created_at, id""",
            {"key": api_key_id},
        ).fetchall()
        return [_endpoint(r) for r in rows]

    def remove_endpoint(self, api_key_id: str, endpoint_id: str) -> bool:
        cur = self.db.execute(
            "DELETE FROM webhook_endpoints WHERE id = :id AND api_key_id = :key",
            {"id": endpoint_id, "key": api_key_id},
        )
        return bool(cur.rowcount == 1)

    def callback_secret(self, api_key_id: str) -> str:
        self.db.execute(
            """INSERT INTO webhook_secrets (api_key_id, secret, created_at)
            VALUES (:key, :secret, {now}) ON CONFLICT (api_key_id) DO NOTHING""",
            {"key": api_key_id, "secret": new_secret()},
        )
        row = self.db.execute(
            "SELECT secret FROM webhook_secrets WHERE api_key_id = :key", {"key": api_key_id}
        ).fetchone()
        return str(row["secret"])

    # -- the outbox -----------------------------------------------------------------------

    def claim_due(self, owner: str, lease_seconds: float, limit: int) -> list[Delivery]:
        """Lease up to `limit` due deliveries to `owner`. A lease that ran out (its sender
        died mid-attempt) makes the row due again. PostgreSQL: SKIP LOCKED, so several API
        processes claim different rows without waiting for each other."""
        with self.db.transaction():
            rows = self.db.execute(
                f"""UPDATE webhook_deliveries SET lease_owner = :owner,
                    lease_until = {{now}} + :lease
                WHERE id IN (
                    SELECT id FROM webhook_deliveries
                    WHERE status = 'PENDING' AND next_at <= {{now}}
                      AND (lease_until IS NULL OR lease_until < {{now}})
                    ORDER BY next_at LIMIT :limit{self.db.dialect.skip_locked})
                RETURNING id""",
                {"owner": owner, "lease": lease_seconds, "limit": limit},
            ).fetchall()
            if not rows:
                return []
            names = {f"d{i}": r["id"] for i, r in enumerate(rows)}
            ids = ", ".join(f":{name}" for name in names)
            claimed = self.db.execute(
                f"""SELECT {_DELIVERY_COLUMNS},
                    COALESCE(e.secret, s.secret) AS secret
                FROM webhook_deliveries d
                LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id
                LEFT JOIN webhook_secrets s ON s.api_key_id = d.api_key_id
                    AND d.endpoint_id IS NULL
                WHERE d.id IN ({ids}) ORDER BY d.next_at""",
                names,
            ).fetchall()
        return [_delivery(r, secret=r["secret"]) for r in claimed]

    def record_attempt(
        self,
        delivery: Delivery,
        owner: str,
        body: str,
        outcome: AttemptOutcome,
        give_up_seconds: float,
    ) -> str | None:
        with self.db.transaction():
            row = self.db.execute(
                f"""UPDATE webhook_deliveries SET attempts = attempts + 1,
                    status = CASE WHEN :delivered = 1 THEN '{DELIVERED}'
                                  WHEN :retry = 0 OR {{now}} + :retry_in > created_at + :give_up
                                  THEN '{FAILED}' ELSE '{PENDING}' END,
                    next_at = {{now}} + :retry_in, lease_owner = NULL, lease_until = NULL,
                    body = COALESCE(body, :body), last_error = :error,
                    finished_at = CASE WHEN :delivered = 1 OR :retry = 0
                                         OR {{now}} + :retry_in > created_at + :give_up
                                       THEN {{now}} ELSE NULL END
                WHERE id = :id AND lease_owner = :owner AND status = '{PENDING}'
                RETURNING attempts, status""",
                {
                    "id": delivery.id,
                    "owner": owner,
                    "delivered": int(outcome.delivered),
                    "retry": int(outcome.retry_in is not None),
                    "retry_in": outcome.retry_in or 0.0,
                    "give_up": give_up_seconds,
                    "body": body or None,
                    "error": outcome.error,
                },
            ).fetchone()
            if row is None:
                return None
            self.db.execute(
                """INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error,
                    duration_ms)
                VALUES (:id, :attempt, {now}, :code, :error, :ms)""",
                {
                    "id": delivery.id,
                    "attempt": row["attempts"],
                    "code": outcome.status_code,
                    "error": outcome.error,
                    "ms": outcome.duration_ms,
                },
            )
        return str(row["status"])

    def deliveries(
        self,
        *,
        status: str | None = None,
        api_key_id: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        where = "1 = 1"
        params: dict[str, Any] = {"limit": limit}
        for column, value in (("status", status), ("api_key_id", api_key_id), ("task_id", task_id)):
            if value is not None:
                where += f" AND d.{column} = :{column}"
                params[column] = value
        rows = self.db.execute(
            f"""SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE {where}
            ORDER BY d.created_at DESC, d.id LIMIT :limit""",
            params,
        ).fetchall()
        if not rows:
            return []
        names = {f"d{i}": r["id"] for i, r in enumerate(rows)}
        ids = ", ".join(f":{name}" for name in names)
        logs: dict[str, list[Attempt]] = {}
        for a in self.db.execute(
            f"""SELECT delivery_id, attempt, at, status_code, error, duration_ms
            FROM webhook_attempts WHERE delivery_id IN ({ids}) ORDER BY delivery_id, attempt""",
            names,
        ).fetchall():
            logs.setdefault(a["delivery_id"], []).append(
                Attempt(a["attempt"], a["at"], a["status_code"], a["error"], a["duration_ms"])
            )
        return [_delivery(r, logs.get(r["id"], ())) for r in rows]

    def forget_finished(self, older_than_seconds: float) -> int:
        """Delete deliveries delivered or failed that long ago, with their attempts."""
        params = {"age": older_than_seconds}
        old = "status <> 'PENDING' AND finished_at < {now} - :age"
        with self.db.transaction():
            self.db.execute(
                f"""DELETE FROM webhook_attempts WHERE delivery_id IN
                (SELECT id FROM webhook_deliveries WHERE {old})""",
                params,
            )
            cur = self.db.execute(f"DELETE FROM webhook_deliveries WHERE {old}", params)
        return int(cur.rowcount)
