"""What every route needs: the services, the caller's key, the request id, a bounded body."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from imagesynth.accounts.admin import AdminService
from imagesynth.accounts.keys import KeyService
from imagesynth.accounts.models import ApiKey
from imagesynth.api.json_body import decode_json
from imagesynth.catalog import Catalog
from imagesynth.config import Settings
from imagesynth.domain import parse_digits
from imagesynth.errors import InvalidParameter, RequestTooLarge
from imagesynth.inputs.fetch import FetchPolicy
from imagesynth.inputs.uploads import UploadSigner
from imagesynth.storage.blobs import BlobStore
from imagesynth.storage.signing import UrlSigner
from imagesynth.tasks.metrics import Metrics
from imagesynth.tasks.models import Task
from imagesynth.tasks.ports import ServiceState, TaskEvents
from imagesynth.tasks.service import TaskService
from imagesynth.tasks.webhooks import WebhookAdmin

# A submission's own webhook URL, beside the body's `parameters.callback_url` (docs/webhooks.md).
CALLBACK_HEADER = "x-imagesynth-callback-url"


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    tasks: TaskService
    keys: KeyService
    blobs: BlobStore
    signer: UrlSigner  # checks the signed /files URLs that a local blob store hands out
    fetch_policy: FetchPolicy
    uploads: UploadSigner
    admin: AdminService
    state: ServiceState  # what /ready and /metrics read from the database
    metrics: Metrics  # this process's registry (GET /metrics)
    events: TaskEvents | None = None  # wake-ups for synchronous callers (None: they poll)
    webhooks: WebhookAdmin | None = None  # webhook endpoints and deliveries (admin API)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = str(uuid.uuid4())
        request.state.request_id = rid
    return rid


async def authenticate(request: Request) -> ApiKey:
    keys = services_of(request).keys
    return await run_in_threadpool(keys.authenticate, request.headers.get("authorization"))


def query_text(request: Request, name: str) -> str | None:
    """A query parameter as text, None when absent or empty. A NUL in it is refused here: it
    is in no name or id, and PostgreSQL text cannot hold one."""
    value = request.query_params.get(name) or None
    if value is not None and "\x00" in value:
        raise InvalidParameter(f"{name} must not contain NUL (%00)")
    return value


def declared_length(request: Request) -> int:
    """The request's Content-Length, 0 if it has none (the HTTP parser has checked that it is
    at most 20 ASCII digits: see api/server.py)."""
    declared = request.headers.get("content-length", "")
    try:
        return parse_digits(declared, max_digits=20)
    except ValueError:
        return 0


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, refusing bodies over the size limit before reading them."""
    limit = services_of(request).settings.max_request_bytes
    if declared_length(request) > limit:
        raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
    body = decode_json(bytes(chunks))
    if not isinstance(body, dict):
        raise InvalidParameter("Request body must be a JSON object.")
    return body


def public_base_url(request: Request) -> str:
    configured = services_of(request).settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


def url_for(request: Request) -> Callable[[str], str]:
    """blob key -> the absolute URL a client downloads it from, valid for the URL TTL (the
    blob store decides what that URL is: see storage/blobs.py)."""
    base = public_base_url(request)
    svc = services_of(request)
    ttl = svc.settings.url_ttl_seconds

    def absolute(key: str) -> str:
        url = svc.blobs.url_for(key, ttl)
        return base + url if url.startswith("/") else url

    return absolute


def is_async(request: Request) -> bool:
    return request.headers.get("x-dashscope-async", "").strip().lower() == "enable"


async def submit_task(
    request: Request,
    key: ApiKey,
    model: str,
    fields: dict[str, Any],
    reference: Callable[[], bytes] | None = None,
    callback_url: str | None = None,
) -> Task:
    """Queue a task for this request (its request id and workspace recorded on the task).
    `callback_url`: the body's, if it names one; the X-ImageSynth-Callback-URL header's
    otherwise (both, and different: 400)."""
    header = request.headers.get(CALLBACK_HEADER) or None
    if header is not None and callback_url is not None and header != callback_url:
        raise InvalidParameter(
            "callback_url: the X-ImageSynth-Callback-URL header and parameters.callback_url "
            "name different URLs; give one"
        )
    return await run_in_threadpool(
        functools.partial(
            services_of(request).tasks.submit,
            key,
            model,
            fields,
            request_id=request_id_of(request),
            workspace=request.headers.get("x-dashscope-workspace"),
            reference=reference,
            callback_url=callback_url or header,
        )
    )
