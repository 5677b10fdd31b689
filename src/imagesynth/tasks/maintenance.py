"""Housekeeping any process may run, idempotently: requeue or fail tasks whose worker stopped
heartbeating, and forget finished tasks (rows and files) and finished webhook deliveries after
the retention period."""

from __future__ import annotations

import logging
import threading

from imagesynth.storage.blobs import BlobStore
from imagesynth.tasks.ports import ExpiringTasks, LeaseReaper
from imagesynth.tasks.webhooks import WebhookStore

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(
        self,
        reaper: LeaseReaper,
        tasks: ExpiringTasks,
        blobs: BlobStore,
        retention_seconds: float,
        upload_ttl_seconds: float | None = None,
        *,
        webhooks: WebhookStore | None = None,
    ) -> None:
        self.reaper = reaper
        self.tasks = tasks
        self.blobs = blobs
        self.retention_seconds = retention_seconds
        self.upload_ttl_seconds = upload_ttl_seconds
        self.webhooks = webhooks

    def run_once(self) -> None:
        for task_id, status in self.reaper.reap_expired_leases():
            log.warning("task %s: worker lease expired -> %s", task_id, status)
        while expired := self.tasks.expired_task_ids(self.retention_seconds):
            # Files first: a crash in between leaves a row whose files are gone (it was
            # expiring anyway), never files that no row will ever delete.
            for task_id in expired:
                self.blobs.delete_prefix(task_id)
            self.tasks.delete_tasks(expired)
            log.info("forgot %d expired tasks", len(expired))
        if self.webhooks is not None:
            forgotten = self.webhooks.forget_finished(self.retention_seconds)
            if forgotten:
                log.info("forgot %d finished webhook deliveries", forgotten)
        if self.upload_ttl_seconds is not None:
            removed = self.blobs.expire("uploads", self.upload_ttl_seconds)
            if removed:
                log.info("deleted %d expired uploads", removed)

    def run_forever(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("maintenance pass failed; retrying")
            stop.wait(interval)

    def start(self, stop: threading.Event, interval: float) -> threading.Thread:
        thread = threading.Thread(
            target=self.run_forever, args=(stop, interval), name="maintenance", daemon=True
        )
        thread.start()
        return thread
