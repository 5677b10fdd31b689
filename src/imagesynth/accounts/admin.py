"""Administration of keys and usage: one implementation behind `imagesynth keys|usage` and the
admin HTTP API (/admin/v1), which only the admin credential opens, never an API key."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from imagesynth.accounts.keys import KEY_PREFIX, KeyService
from imagesynth.accounts.limits import DAY, submission_rps, terms_for
from imagesynth.accounts.models import ApiKey
from imagesynth.accounts.money import from_micros
from imagesynth.accounts.ports import Ledger
from imagesynth.accounts.settings import KeySettings, apply_changes
from imagesynth.accounts.usage import Granularity, UsageRow, usage_report
from imagesynth.catalog import Catalog
from imagesynth.domain import parse_digits
from imagesynth.errors import AccessDenied, InvalidApiKey, InvalidParameter, MissingApiKey
from imagesynth.storage.signing import load_or_create_secret


def load_admin_token(configured: str | None, path: Path) -> str:
    """The configured token, or one made once and kept (0600) in `path`."""
    return configured or load_or_create_secret(path).hex()


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


def parse_since(text: str | None, now: float | None = None) -> float:
    """'2026-11-01', '2026-11-01T08:00', '24h' or '7d' (ago) -> epoch; None -> everything."""
    if not text:
        return 0.0
    now = time.time() if now is None else now
    if text[-1] in "hd":
        try:
            # At most 6 digits: 999999 days is before year 1 already.
            count = parse_digits(text[:-1], max_digits=6)
        except ValueError:
            pass
        else:
            return now - count * (3600 if text[-1] == "h" else DAY)
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        raise InvalidParameter(
            f"since must be an ISO date/time (2026-11-01, 2026-11-01T08:00) or 24h / 7d; "
            f"got {text!r}"
        ) from None


class AdminService:
    def __init__(self, ledger: Ledger, catalog: Catalog, keys: KeyService, token: str) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.keys = keys
        self.token = token

    def check(self, authorization: str | None) -> None:
        """Let only the admin credential through; an API key is refused outright."""
        if not authorization:
            raise MissingApiKey()
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        # As bytes: compare_digest() raises TypeError on a non-ASCII str, and a header may
        # carry any byte from 0x80 up (read as Latin-1).
        if scheme.lower() == "bearer" and hmac.compare_digest(
            secret.encode("utf-8", "surrogateescape"), self.token.encode()
        ):
            return
        if secret.startswith(KEY_PREFIX):
            raise AccessDenied("The admin API takes the admin credential, not an API key.")
        raise InvalidApiKey("Invalid admin credential.")

    def create(self, name: str, changes: Mapping[str, Any] | None = None) -> tuple[ApiKey, str]:
        settings = apply_changes(KeySettings(), changes or {})
        return self.keys.create(name, settings)

    def all_keys(self) -> list[ApiKey]:
        return self.keys.all()

    def show(self, ref: str) -> dict[str, Any]:
        return self.describe(self.keys.resolve(ref), per_model=True)

    def revoke(self, ref: str) -> ApiKey:
        return self.keys.revoke(ref)

    def change(self, ref: str, changes: Mapping[str, Any]) -> ApiKey:
        key = self.keys.resolve(ref)
        model = changes.get("model")
        if model is not None:
            self.catalog.get(model)  # ModelNotFound for a name the catalog lacks
        return self.keys.update(key.id, apply_changes(key.settings, changes))

    def usage(
        self,
        key: str | None = None,
        model: str | None = None,
        since: str | None = None,
        by: str | None = None,
    ) -> list[UsageRow]:
        if by not in (None, "hour", "day"):
            raise InvalidParameter(f"by must be hour or day; got {by!r}")
        granularity: Granularity | None = by  # type: ignore[assignment]
        only = self.keys.resolve(key).id if key else None
        return usage_report(
            self.ledger,
            self.catalog,
            self.keys.all(),
            key_id=only,
            model=model,
            since=parse_since(since),
            by=granularity,
        )

    def describe(self, key: ApiKey, per_model: bool = False) -> dict[str, Any]:
        """A key as JSON: never its secret (which is not stored)."""
        s = key.settings
        currency = self.catalog.billing.currency
        out: dict[str, Any] = {
            "id": key.id,
            "name": key.name,
            "prefix": key.prefix,
            "status": "revoked" if key.revoked_at else "active",
            "created_at": iso(key.created_at),
            "last_used_at": iso(key.last_used_at),
            "revoked_at": iso(key.revoked_at),
            "free_tier_only": s.free_tier_only,
            "monthly_cap": None
            if s.monthly_cap_micros is None
            else str(from_micros(s.monthly_cap_micros)),
            "currency": currency,
            "max_pending": s.max_pending,
            "overrides": {name: o.to_json() for name, o in s.models.items() if o.to_json()},
        }
        if per_model:
            models = {}
            now = time.time()
            for spec in self.catalog.models.values():
                terms = terms_for(key, spec, self.catalog.billing)
                used = self.ledger.free_images_used(key.id, spec.name)
                models[spec.name] = {
                    "rps": submission_rps(key, spec),
                    "in_flight": terms.in_flight,
                    "price": str(from_micros(terms.price_micros)),
                    "free_quota": terms.free_quota,
                    "free_images_used": used,
                    "free_images_left": terms.free_left(used, now),
                    "free_until": iso(terms.free_until),
                }
            out["models"] = models
        return out
