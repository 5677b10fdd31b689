"""Token buckets in SQL (accounts.ports.RateBuckets): the state lives in the database, so every
API process sharing it enforces one limit."""

from __future__ import annotations

from imagesynth.db.database import Database


class SqlRateBuckets:
    def __init__(self, db: Database) -> None:
        self.db = db

    def take_token(self, bucket: str, rate: float, burst: float) -> bool:
        """A token bucket in one statement: `burst` tokens, refilled at `rate` per second.
        True if a token was taken."""
        row = self.db.execute(
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
