"""API keys: `sk-` + 48 hex characters, stored only as a SHA-256 hash.

A fast hash is right here: keys are 192 random bits, so there is nothing to brute-force, and
every request checks one.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from imagesynth.errors import InvalidApiKey, MissingApiKey
from imagesynth.tasks.models import ApiKey
from imagesynth.tasks.store_sql import SqlStore

KEY_PREFIX = "sk-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyService:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def create(self, name: str = "default") -> tuple[ApiKey, str]:
        """A new key and its secret; the secret is shown once and never stored."""
        secret = KEY_PREFIX + secrets.token_hex(24)
        key = self.store.insert_key(
            key_id=str(uuid.uuid4()), name=name, prefix=secret[:7], secret_hash=hash_key(secret)
        )
        return key, secret

    def authenticate(self, authorization: str | None) -> ApiKey:
        """Check an `Authorization: Bearer <key>` header value."""
        if not authorization:
            raise MissingApiKey()
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise InvalidApiKey()
        key = self.store.find_key(hash_key(secret.strip()))
        if key is None or key.revoked_at is not None:
            raise InvalidApiKey()
        return key
