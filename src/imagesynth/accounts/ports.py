"""The account stores as their consumers see them (implemented in SQL by imagesynth.db)."""

from __future__ import annotations

from typing import Protocol

from imagesynth.accounts.models import ApiKey, LedgerEntry
from imagesynth.accounts.settings import KeySettings


class KeyStore(Protocol):
    def insert_key(
        self,
        key_id: str,
        name: str,
        prefix: str,
        secret_hash: str,
        settings: KeySettings | None = None,
    ) -> ApiKey: ...

    def find_key(self, secret_hash: str) -> ApiKey | None: ...

    def get_key(self, key_id: str) -> ApiKey | None: ...

    def touch_key(self, key_id: str, min_interval: float) -> None: ...

    def revoke_key(self, key_id: str) -> bool: ...

    def update_key_settings(self, key_id: str, settings: KeySettings) -> ApiKey | None: ...

    def list_keys(self) -> list[ApiKey]: ...


class RateBuckets(Protocol):
    def take_token(self, bucket: str, rate: float, burst: float) -> bool:
        """Take a token from `bucket` (`burst` deep, refilled at `rate` per second); False
        when it is empty."""
        ...


class Ledger(Protocol):
    def entries(
        self, api_key_id: str | None = None, model: str | None = None, since: float = 0.0
    ) -> list[LedgerEntry]:
        """Finished tasks created since `since`, oldest first."""
        ...

    def unfinished(
        self, api_key_id: str | None = None, model: str | None = None, since: float = 0.0
    ) -> list[tuple[str, str, float]]:
        """(key id, model, created_at) of every task still PENDING or RUNNING."""
        ...

    def free_images_used(self, api_key_id: str, model: str) -> int: ...
