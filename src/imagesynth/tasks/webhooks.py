"""Signed webhooks (docs/webhooks.md): where a task's end is sent, and the outbox it goes out
from.

A key registers endpoints (each with its own `whsec_` secret); a submission may also name a
callback URL, signed with the key's callback secret. When a task ends, the transaction that
ends it writes one outbox row per (task, destination) (db/webhooks.py); the sender
(tasks/webhook_sender.py) delivers them at least once, with retries. This module holds the
value types, the port the sender and the admin operations see, and the admin operations.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from imagesynth.accounts.admin import iso
from imagesynth.accounts.keys import KeyService
from imagesynth.domain import TaskStatus
from imagesynth.errors import InvalidParameter, InvalidURL, ResourceNotFound
from imagesynth.inputs.fetch import IPNetwork, check_public_url

# The event each final status is announced as.
EVENTS = {
    TaskStatus.SUCCEEDED: "task.succeeded",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.CANCELED: "task.canceled",
}
EVENT_TYPES = tuple(EVENTS.values())
SECRET_PREFIX = "whsec_"
MAX_ENDPOINTS_PER_KEY = 20

# Delivery statuses.
PENDING = "PENDING"
DELIVERED = "DELIVERED"
FAILED = "FAILED"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED)


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclass(frozen=True)
class Endpoint:
    id: str
    api_key_id: str
    url: str
    events: tuple[str, ...] | None  # None: every event
    created_at: float
    secret: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """As the admin API lists it: never the secret (shown once, on creation)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events) if self.events is not None else list(EVENT_TYPES),
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True)
class Attempt:
    attempt: int
    at: float
    status_code: int | None  # None: no HTTP answer (refused, timed out, blocked)
    error: str | None
    duration_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": iso(self.at),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True)
class Delivery:
    """One outbox row: a task's end, for one destination. `id` is the `webhook-id` header,
    the same on every attempt."""

    id: str
    task_id: str
    api_key_id: str
    endpoint_id: str | None  # None: the task's own callback URL
    url: str
    event: str
    status: str
    attempts: int
    created_at: float
    next_at: float
    finished_at: float | None = None
    body: str | None = None  # fixed by the first attempt, so every retry sends the same bytes
    last_error: str | None = None
    secret: str | None = field(default=None, repr=False)  # filled in when claimed
    log: tuple[Attempt, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "api_key_id": self.api_key_id,
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "event": self.event,
            "status": self.status.lower(),
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "next_attempt_at": iso(self.next_at) if self.status == PENDING else None,
            "finished_at": iso(self.finished_at),
            "last_error": self.last_error,
            "log": [a.to_json() for a in self.log],
        }


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt came to: delivered (2xx), or a failure to retry at `retry_in`
    seconds (None: give up, the delivery is FAILED)."""

    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: int
    retry_in: float | None = None


class WebhookStore(Protocol):
    """The webhook tables (db/webhooks.py), as the sender and the admin operations see them."""

    def add_endpoint(
        self, api_key_id: str, url: str, events: Sequence[str] | None, secret: str
    ) -> Endpoint: ...

    def endpoints(self, api_key_id: str) -> list[Endpoint]: ...

    def remove_endpoint(self, api_key_id: str, endpoint_id: str) -> bool: ...

    def callback_secret(self, api_key_id: str) -> str:
        """The key's secret for callback-URL deliveries, made on first use."""
        ...

    def claim_due(self, owner: str, lease_seconds: float, limit: int) -> list[Delivery]:
        """PENDING deliveries due now, leased to `owner` (with their signing secret)."""
        ...

    def record_attempt(
        self,
        delivery: Delivery,
        owner: str,
        body: str,
        outcome: AttemptOutcome,
        give_up_seconds: float,
    ) -> str | None:
        """Log one attempt and move the delivery on: DELIVERED, PENDING for a retry in
        outcome.retry_in, or FAILED (no retry, or the retry would come more than
        `give_up_seconds` after the delivery was queued). Returns the new status; fenced by
        the lease: None if `owner` no longer holds it. `body` is kept from the first attempt
        on, so that every retry sends the same bytes."""
        ...

    def deliveries(
        self,
        *,
        status: str | None = None,
        api_key_id: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries, newest first, each with its attempts' log."""
        ...

    def forget_finished(self, older_than_seconds: float) -> int:
        """Delete deliveries delivered or failed that long ago (housekeeping)."""
        ...


def check_callback_url(url: str, allow: Sequence[IPNetwork], field: str = "callback_url") -> str:
    """A webhook URL as it will be called; 400 InvalidParameter unless it is http(s) and its
    host resolves to public addresses only (or ones in `allow`). Checked again on every
    delivery, since DNS may answer differently later."""
    if len(url) > 2048:
        raise InvalidParameter(f"{field}: at most 2048 characters")
    try:
        return check_public_url(url, allow)
    except InvalidURL as exc:
        raise InvalidParameter(f"{field}: {exc.message}") from None


def parse_events(events: Sequence[str] | None) -> tuple[str, ...] | None:
    """An endpoint's event filter; None or empty: every event."""
    if not events:
        return None
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise InvalidParameter(
            f"events: unknown event {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}"
        )
    return tuple(e for e in EVENT_TYPES if e in events)


class WebhookAdmin:
    """The admin operations on webhooks, behind /admin/v1 and `imagesynth keys webhook`."""

    def __init__(self, store: WebhookStore, keys: KeyService, allow: Sequence[IPNetwork]) -> None:
        self.store = store
        self.keys = keys
        self.allow = tuple(allow)

    def add(self, ref: str, url: str, events: Sequence[str] | None = None) -> tuple[Endpoint, str]:
        """Register an endpoint for the key; returns it and its secret (shown only now)."""
        key = self.keys.resolve(ref)
        checked = check_callback_url(url, self.allow, field="url")
        wanted = parse_events(events)
        if len(self.store.endpoints(key.id)) >= MAX_ENDPOINTS_PER_KEY:
            raise InvalidParameter(f"A key has at most {MAX_ENDPOINTS_PER_KEY} webhook endpoints.")
        secret = new_secret()
        return self.store.add_endpoint(key.id, checked, wanted, secret), secret

    def endpoints(self, ref: str) -> list[Endpoint]:
        return self.store.endpoints(self.keys.resolve(ref).id)

    def remove(self, ref: str, endpoint_id: str) -> None:
        """Forget the endpoint; deliveries still queued for it fail when due ("the webhook
        endpoint was removed")."""
        if not self.store.remove_endpoint(self.keys.resolve(ref).id, endpoint_id):
            raise ResourceNotFound(f"The key has no webhook endpoint {endpoint_id!r}.")

    def callback_secret(self, ref: str) -> str:
        """The secret that signs deliveries to the key's submissions' callback URLs."""
        return self.store.callback_secret(self.keys.resolve(ref).id)

    def deliveries(
        self,
        *,
        status: str | None = None,
        key: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        if status is not None and status.upper() not in DELIVERY_STATUSES:
            raise InvalidParameter(
                f"status must be one of {', '.join(s.lower() for s in DELIVERY_STATUSES)}; "
                f"got {status!r}"
            )
        return self.store.deliveries(
            status=status.upper() if status else None,
            api_key_id=self.keys.resolve(key).id if key else None,
            task_id=task_id,
            limit=limit,
        )
