"""API keys in SQL (accounts.ports.KeyStore): only the secret's hash is stored."""

from __future__ import annotations

from imagesynth.accounts.models import ApiKey
from imagesynth.accounts.settings import KeySettings
from imagesynth.db.database import Database
from imagesynth.db.rows import KEY_COLUMNS, row_to_key


class SqlKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert_key(
        self,
        key_id: str,
        name: str,
        prefix: str,
        secret_hash: str,
        settings: KeySettings | None = None,
    ) -> ApiKey:
        row = self.db.execute(
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
        return row_to_key(row)

    def find_key(self, secret_hash: str) -> ApiKey | None:
        row = self.db.execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = :hash", {"hash": secret_hash}
        ).fetchone()
        return row_to_key(row) if row else None

    def get_key(self, key_id: str) -> ApiKey | None:
        row = self.db.execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = :id", {"id": key_id}
        ).fetchone()
        return row_to_key(row) if row else None

    def touch_key(self, key_id: str, min_interval: float) -> None:
        """Record a use; at most once per min_interval, so requests do not all write."""
        self.db.execute(
            """UPDATE api_keys SET last_used_at = {now} WHERE id = :id
            AND (last_used_at IS NULL OR last_used_at < {now} - :interval)""",
            {"id": key_id, "interval": min_interval},
        )

    def revoke_key(self, key_id: str) -> bool:
        cur = self.db.execute(
            "UPDATE api_keys SET revoked_at = {now} WHERE id = :id AND revoked_at IS NULL",
            {"id": key_id},
        )
        return bool(cur.rowcount == 1)

    def update_key_settings(self, key_id: str, settings: KeySettings) -> ApiKey | None:
        row = self.db.execute(
            f"UPDATE api_keys SET settings = :settings WHERE id = :id RETURNING {KEY_COLUMNS}",
            {"id": key_id, "settings": settings.dumps()},
        ).fetchone()
        return row_to_key(row) if row else None

    def list_keys(self) -> list[ApiKey]:
        rows = self.db.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at").fetchall()
        return [row_to_key(r) for r in rows]
