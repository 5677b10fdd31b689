"""The webhook sender: a background thread of each API process that delivers the outbox
(docs/webhooks.md).

It claims due deliveries with a lease (several processes may run one each), signs each per
the Standard Webhooks spec with the `standardwebhooks` library, POSTs it through the same
SSRF-safe connections as reference fetches (inputs/fetch.py, the addresses checked again on
every attempt), and records the attempt: delivered on a 2xx, otherwise retried with
exponential backoff and jitter until IMAGESYNTH_WEBHOOK_GIVE_UP_SECONDS after the task ended,
then FAILED. At least once: a sender that dies mid-attempt leaves the lease to run out and
the row is sent again, with the same `webhook-id`, which receivers use to drop duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from standardwebhooks import Webhook

from imagesynth.errors import ImageSynthError
from imagesynth.inputs.fetch import FetchPolicy, post
from imagesynth.tasks.events import ANY
from imagesynth.tasks.models import Task
from imagesynth.tasks.ports import TaskEvents
from imagesynth.tasks.webhooks import AttemptOutcome, Delivery, WebhookStore

log = logging.getLogger(__name__)

USER_AGENT = "imagesynth-webhooks"
# What a receiver answers is kept only to this length in the log.
_ANSWER_SHOWN = 200


class TaskReader(Protocol):
    def get_task(self, task_id: str, api_key_id: str | None = None) -> Task | None: ...


def backoff(attempt: int, first: float, longest: float, rng: random.Random) -> float:
    """Seconds before the retry after failed attempt number `attempt` (1, 2, ...): `first`
    doubling each time, at most `longest`, then +-25% so that retries spread out."""
    delay = min(first * 2 ** min(attempt - 1, 62), longest)
    return delay * rng.uniform(0.75, 1.25)


def event_body(event: str, task: Task, data: dict[str, Any]) -> str:
    """The JSON a delivery carries: Standard Webhooks' envelope around the task's query
    reply (what GET /api/v1/tasks/{id} answers)."""
    ended = datetime.fromtimestamp(task.finished_at or time.time(), UTC)
    envelope = {
        "type": event,
        "timestamp": ended.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": data,
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))


def signed_headers(delivery_id: str, secret: str, body: str) -> list[tuple[str, str]]:
    """The Standard Webhooks headers for one attempt: the id is the delivery's, the same on
    every attempt; the timestamp (and so the signature) is the attempt's."""
    now = datetime.now(UTC)
    return [
        ("Content-Type", "application/json"),
        ("User-Agent", USER_AGENT),
        ("webhook-id", delivery_id),
        ("webhook-timestamp", str(int(now.timestamp()))),
        ("webhook-signature", Webhook(secret).sign(delivery_id, now, body)),
    ]


class WebhookSender:
    def __init__(
        self,
        store: WebhookStore,
        tasks: TaskReader,
        render: Callable[[Task], dict[str, Any]],
        policy: FetchPolicy,
        *,
        retry_seconds: float,
        retry_max_seconds: float,
        give_up_seconds: float,
        poll_seconds: float = 1.0,
        concurrency: int = 4,
        events: TaskEvents | None = None,
    ) -> None:
        """render: a task -> its query reply (api/webhook_body.py). policy: which addresses
        may be called, and each attempt's timeout."""
        self.store = store
        self.tasks = tasks
        self.render = render
        self.policy = policy
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self.give_up_seconds = give_up_seconds
        self.poll_seconds = poll_seconds
        self.concurrency = concurrency
        self.events = events
        # A lease outlasts an attempt (connect, send and read each have the timeout); a
        # sender that died is replaced once it runs out.
        self.lease_seconds = 3 * policy.timeout_seconds + 30.0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rng = random.Random()
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def run_once(self, pool: ThreadPoolExecutor | None = None) -> int:
        """Claim what is due and attempt it; returns how many were attempted."""
        claimed = self.store.claim_due(self.owner, self.lease_seconds, self.concurrency)
        if pool is None or len(claimed) < 2:
            for delivery in claimed:
                self.attempt(delivery)
        else:
            list(pool.map(self.attempt, claimed))
        return len(claimed)

    def attempt(self, delivery: Delivery) -> None:
        """One attempt at one claimed delivery, recorded (and logged) whatever happens."""
        body = delivery.body
        outcome: AttemptOutcome | None = None
        if body is None:
            task = self.tasks.get_task(delivery.task_id)
            if task is None:
                outcome = AttemptOutcome(False, None, "the task no longer exists", 0)
            else:
                body = event_body(delivery.event, task, self.render(task))
        secret = delivery.secret
        if secret is None and delivery.endpoint_id is None:
            secret = self.store.callback_secret(delivery.api_key_id)  # made on first use
        if secret is None:
            outcome = AttemptOutcome(False, None, "the webhook endpoint was removed", 0)
        if outcome is None:
            assert body is not None and secret is not None
            outcome = self._post(delivery, secret, body)
        status = self.store.record_attempt(
            delivery, self.owner, body or "", outcome, self.give_up_seconds
        )
        log.log(
            logging.INFO if outcome.delivered else logging.WARNING,
            "webhook %s (%s, task %s) attempt %d to %s: %s in %d ms -> %s",
            delivery.id,
            delivery.event,
            delivery.task_id,
            delivery.attempts + 1,
            delivery.url,
            outcome.status_code if outcome.status_code is not None else outcome.error,
            outcome.duration_ms,
            (status or "lease lost").lower(),
        )

    def _post(self, delivery: Delivery, secret: str, body: str) -> AttemptOutcome:
        started = time.monotonic()
        headers = signed_headers(delivery.id, secret, body)
        code: int | None = None
        error: str | None = None
        try:
            code, answer = post(delivery.url, body.encode(), headers, self.policy)
        except ImageSynthError as exc:
            error = exc.message
        else:
            if not 200 <= code < 300:
                shown = answer[:_ANSWER_SHOWN].decode("utf-8", "replace")
                error = f"HTTP {code}" + (f": {shown}" if shown else "")
        ms = int((time.monotonic() - started) * 1000)
        if error is None:
            return AttemptOutcome(True, code, None, ms)
        retry_in = backoff(
            delivery.attempts + 1, self.retry_seconds, self.retry_max_seconds, self._rng
        )
        return AttemptOutcome(False, code, error, ms, retry_in=retry_in)

    def run_forever(self, stop: threading.Event) -> None:
        unsubscribe = self.events.on_ended(ANY, lambda _: self._wake.set()) if self.events else None
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook") as pool:
                while not stop.is_set():
                    self._wake.clear()  # before the claim, so an end during it is not lost
                    try:
                        if self.run_once(pool):
                            continue
                    except Exception:
                        log.exception("webhook delivery pass failed; retrying")
                    self._wake.wait(self.poll_seconds)
        finally:
            if unsubscribe is not None:
                unsubscribe()

    def start(self, stop: threading.Event) -> threading.Thread:
        def run() -> None:
            self.run_forever(stop)

        def on_stop() -> None:
            stop.wait()
            self._wake.set()

        threading.Thread(target=on_stop, name="webhook-stop", daemon=True).start()
        thread = threading.Thread(target=run, name="webhooks", daemon=True)
        thread.start()
        return thread
