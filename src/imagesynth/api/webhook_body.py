"""What a webhook delivery carries as its `data`: the task's DashScope query reply, exactly as
GET /api/v1/tasks/{id} answers it, with result links valid for the URL TTL (docs/webhooks.md).
The sender (tasks/webhook_sender.py) wraps it in the event's envelope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagesynth.api.schemas import task_reply
from imagesynth.catalog import Catalog
from imagesynth.storage.blobs import BlobStore
from imagesynth.tasks.models import Task


def query_reply_renderer(
    catalog: Catalog, blobs: BlobStore, base_url: str, url_ttl: int
) -> Callable[[Task], dict[str, Any]]:
    """task -> its query reply; a link the blob store answers as a path (the local store's
    signed /files/...) is prefixed with `base_url`, the service's public URL. The reply's
    request_id is the submission's, since no request asked for this one."""
    base = base_url.rstrip("/")

    def url_for(key: str) -> str:
        url = blobs.url_for(key, url_ttl)
        return base + url if url.startswith("/") else url

    def render(task: Task) -> dict[str, Any]:
        return task_reply(task.request_id, task, catalog.models.get(task.model), url_for)

    return render
