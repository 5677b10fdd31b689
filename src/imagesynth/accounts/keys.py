"""API keys: `sk-` + 48 hex characters, stored only as a SHA-256 hash.

A fast hash is right here: keys are 192 random bits, so there is nothing to brute-force, and
every request checks one. Every request looks the key up in the database (no cache), so a
revoked key is refused on its very next request, by every API process.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from imagesynth.accounts.models import ApiKey
from imagesynth.accounts.ports import KeyStore
from imagesynth.accounts.settings import KeySettings
from imagesynth.errors import InvalidApiKey, InvalidParameter, MissingApiKey, ResourceNotFound

KEY_PREFIX = "sk-"
# Record a key's last use at most this often: a write per request would be wasted work.
LAST_USED_RESOLUTION_SECONDS = 60.0
# A name is shown in `keys list` and usage tables: no control characters (NUL included, which
# PostgreSQL text cannot hold), and short.
MAX_NAME_CHARS = 200


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyService:
    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def create(
        self, name: str = "default", settings: KeySettings | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its secret; the secret is shown once and never stored."""
        if not name.strip():
            raise InvalidParameter("A key needs a name.")
        if len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise InvalidParameter(
                f"name: a key's name is at most {MAX_NAME_CHARS} printable characters."
            )
        secret = KEY_PREFIX + secrets.token_hex(24)
        key = self.store.insert_key(
            key_id=str(uuid.uuid4()),
            name=name.strip(),
            prefix=secret[:7],
            secret_hash=hash_key(secret),
            settings=settings or KeySettings(),
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
        self.store.touch_key(key.id, LAST_USED_RESOLUTION_SECONDS)
        return key

    def resolve(self, ref: str) -> ApiKey:
        """A key by its id, or by a name or secret prefix that only one key has."""
        if "\x00" in ref:  # no key has one (PostgreSQL text cannot even hold it)
            raise ResourceNotFound("No key matches that reference.")
        key = self.store.get_key(ref)
        if key is not None:
            return key
        matches = [k for k in self.all() if ref in (k.name, k.prefix)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InvalidParameter(f"{len(matches)} keys match {ref!r}: use the key's id.")
        raise ResourceNotFound(f"No key matches {ref!r}.")

    def all(self) -> list[ApiKey]:
        """Every key, oldest first."""
        return self.store.list_keys()

    def revoke(self, ref: str) -> ApiKey:
        key = self.resolve(ref)
        self.store.revoke_key(key.id)
        return self.store.get_key(key.id) or key

    def update(self, ref: str, settings: KeySettings) -> ApiKey:
        key = self.resolve(ref)
        return self.store.update_key_settings(key.id, settings) or key
