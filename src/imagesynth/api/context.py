"""What every route needs: the services, the caller's key, the request id, a bounded body."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from imagesynth.accounts.admin import AdminService
from imagesynth.accounts.keys import KeyService
from imagesynth.accounts.models import ApiKey
from imagesynth.catalog import Catalog
from imagesynth.config import Settings
from imagesynth.errors import InvalidParameter, RequestTooLarge
from imagesynth.inputs.fetch import FetchPolicy
from imagesynth.inputs.uploads import UploadSigner
from imagesynth.storage.blobs import BlobStore
from imagesynth.storage.signing import UrlSigner
from imagesynth.tasks.models import Task
from imagesynth.tasks.service import TaskService


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


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, refusing bodies over the size limit before reading them."""
    limit = services_of(request).settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
    try:
        body = json.loads(chunks)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidParameter(f"Request body is not valid JSON: {exc}") from None
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
) -> Task:
    """Queue a task for this request (its request id and workspace recorded on the task)."""
    return await run_in_threadpool(
        functools.partial(
            services_of(request).tasks.submit,
            key,
            model,
            fields,
            request_id=request_id_of(request),
            workspace=request.headers.get("x-dashscope-workspace"),
            reference=reference,
        )
    )
