"""The admin API (/admin/v1): keys, usage and webhooks, for the admin credential only.

Beyond DashScope, which administers keys in its console; the same operations as the
`imagesynth keys` and `imagesynth usage` commands.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from imagesynth.accounts.admin import AdminService, iso
from imagesynth.api import openapi
from imagesynth.api.context import query_text, read_json_object, request_id_of, services_of
from imagesynth.api.schemas import KeyChange, KeyCreate, WebhookCreate
from imagesynth.domain import parse_digits
from imagesynth.errors import InvalidParameter
from imagesynth.tasks.webhooks import WebhookAdmin

router = APIRouter(prefix="/admin/v1")


async def _admin(request: Request) -> AdminService:
    admin = services_of(request).admin
    admin.check(request.headers.get("authorization"))
    return admin


@router.get("/keys", openapi_extra=openapi.operation())
async def list_keys(request: Request) -> dict[str, Any]:
    admin = await _admin(request)
    keys = await run_in_threadpool(admin.all_keys)
    return {"request_id": request_id_of(request), "keys": [admin.describe(k) for k in keys]}


@router.post("/keys", openapi_extra=openapi.operation(body=KeyCreate))
async def create_key(request: Request) -> dict[str, Any]:
    admin = await _admin(request)
    body = await read_json_object(request)
    name = body.pop("name", None)
    if not isinstance(name, str):
        raise InvalidParameter("name: a key needs a name (a string)")
    key, secret = await run_in_threadpool(admin.create, name, body)
    return {"request_id": request_id_of(request), "key": admin.describe(key), "secret": secret}


@router.get("/keys/{ref}", openapi_extra=openapi.operation())
async def show_key(request: Request, ref: str) -> dict[str, Any]:
    admin = await _admin(request)
    return {"request_id": request_id_of(request), "key": await run_in_threadpool(admin.show, ref)}


@router.patch("/keys/{ref}", openapi_extra=openapi.operation(body=KeyChange))
async def change_key(request: Request, ref: str) -> dict[str, Any]:
    admin = await _admin(request)
    body = await read_json_object(request)
    key = await run_in_threadpool(admin.change, ref, body)
    return {"request_id": request_id_of(request), "key": admin.describe(key)}


@router.post("/keys/{ref}/revoke", openapi_extra=openapi.operation())
async def revoke_key(request: Request, ref: str) -> dict[str, Any]:
    admin = await _admin(request)
    key = await run_in_threadpool(admin.revoke, ref)
    return {"request_id": request_id_of(request), "key": admin.describe(key)}


@router.get(
    "/usage",
    openapi_extra=openapi.operation(
        parameters=[
            openapi.query("key", "Only this key (id, name or prefix)."),
            openapi.query("model", "Only this model."),
            openapi.query("since", "2026-11-01, 2026-11-01T08:00, 24h or 7d."),
            openapi.query("by", "Split by hour or day.", type="string", enum=["hour", "day"]),
        ]
    ),
)
async def usage(request: Request) -> dict[str, Any]:
    admin = await _admin(request)
    rows = await run_in_threadpool(
        functools.partial(
            admin.usage,
            key=query_text(request, "key"),
            model=query_text(request, "model"),
            since=query_text(request, "since"),
            by=query_text(request, "by"),
        )
    )
    currency = admin.catalog.billing.currency
    return {"request_id": request_id_of(request), "usage": [r.to_json(currency) for r in rows]}


# -- webhooks (docs/webhooks.md) ------------------------------------------------------------


async def _webhooks(request: Request) -> WebhookAdmin:
    await _admin(request)
    webhooks = services_of(request).webhooks
    assert webhooks is not None, "Runtime.services builds the webhook admin"
    return webhooks


@router.post("/keys/{ref}/webhooks", openapi_extra=openapi.operation(body=WebhookCreate))
async def add_webhook(request: Request, ref: str) -> dict[str, Any]:
    """Register an endpoint for the key's task ends; its secret is shown only in this reply."""
    webhooks = await _webhooks(request)
    url, events = WebhookCreate.parse(await read_json_object(request))
    endpoint, secret = await run_in_threadpool(webhooks.add, ref, url, events)
    return {"request_id": request_id_of(request), "webhook": endpoint.to_json(), "secret": secret}


@router.get("/keys/{ref}/webhooks", openapi_extra=openapi.operation())
async def list_webhooks(request: Request, ref: str) -> dict[str, Any]:
    webhooks = await _webhooks(request)
    endpoints = await run_in_threadpool(webhooks.endpoints, ref)
    return {"request_id": request_id_of(request), "webhooks": [e.to_json() for e in endpoints]}


@router.delete("/keys/{ref}/webhooks/{endpoint_id}", openapi_extra=openapi.operation())
async def remove_webhook(request: Request, ref: str, endpoint_id: str) -> dict[str, Any]:
    webhooks = await _webhooks(request)
    await run_in_threadpool(webhooks.remove, ref, endpoint_id)
    return {"request_id": request_id_of(request)}


@router.get("/keys/{ref}/webhook-secret", openapi_extra=openapi.operation())
async def webhook_secret(request: Request, ref: str) -> dict[str, Any]:
    """The secret that signs deliveries to the callback URLs of the key's submissions."""
    webhooks = await _webhooks(request)
    secret = await run_in_threadpool(webhooks.callback_secret, ref)
    return {"request_id": request_id_of(request), "secret": secret}


@router.get(
    "/webhooks/deliveries",
    openapi_extra=openapi.operation(
        parameters=[
            openapi.query(
                "status",
                "Only deliveries in this state.",
                type="string",
                enum=["pending", "delivered", "failed"],
            ),
            openapi.query("key", "Only this key's (id, name or prefix)."),
            openapi.query("task_id", "Only this task's."),
        ]
    ),
)
async def webhook_deliveries(request: Request) -> dict[str, Any]:
    """Deliveries, newest first (at most 100), each with the log of its attempts."""
    webhooks = await _webhooks(request)
    rows = await run_in_threadpool(
        functools.partial(
            webhooks.deliveries,
            status=query_text(request, "status"),
            key=query_text(request, "key"),
            task_id=query_text(request, "task_id"),
        )
    )
    return {"request_id": request_id_of(request), "deliveries": [d.to_json() for d in rows]}


# -- The web console's operator pages: the queue, the workers and recent failures -------------


@router.get("/queue", openapi_extra=openapi.operation())
async def queue(request: Request) -> dict[str, Any]:
    """Per model: tasks waiting and running, the oldest wait, live workers; and each live
    worker with its models (what /ready and /metrics read, for a person)."""
    await _admin(request)
    svc = services_of(request)
    window = svc.settings.lease_seconds  # live as /ready counts it (routes_ops.worker_window)

    def read() -> dict[str, Any]:
        depths = svc.state.queue_depths()
        counts = svc.state.task_counts()
        live = svc.state.live_workers(window)
        seen = svc.state.workers_seen(window)
        models = [
            {
                "model": name,
                "waiting": depths.get(name, (0, 0.0))[0],
                "running": counts.get((name, "RUNNING"), 0),
                "oldest_wait_seconds": round(depths[name][1], 1) if name in depths else None,
                "live_workers": live.get(name, 0),
            }
            for name in svc.catalog.models
        ]
        workers = [
            {"worker_id": w.worker_id, "models": list(w.models), "seen_seconds_ago": w.seconds_ago}
            for w in seen
        ]
        return {"models": models, "workers": workers}

    return {"request_id": request_id_of(request), **await run_in_threadpool(read)}


FAILURES_MAX = 200


@router.get(
    "/failures",
    openapi_extra=openapi.operation(
        parameters=[
            openapi.query(
                "limit",
                "At most this many (default 50).",
                type="integer",
                minimum=1,
                maximum=FAILURES_MAX,
            )
        ]
    ),
)
async def failures(request: Request) -> dict[str, Any]:
    """The most recent FAILED tasks of every key, newest first, with their codes."""
    await _admin(request)
    svc = services_of(request)
    raw = query_text(request, "limit") or "50"
    try:
        limit = parse_digits(raw, max_digits=4)
    except ValueError:
        limit = 0
    if not 1 <= limit <= FAILURES_MAX:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise InvalidParameter(f"limit must be an integer in [1, {FAILURES_MAX}]; got {shown!r}")
    rows = await run_in_threadpool(svc.state.recent_failures, limit)
    return {
        "request_id": request_id_of(request),
        "failures": [
            {
                "task_id": f.task_id,
                "api_key_id": f.api_key_id,
                "model": f.model,
                "code": f.code,
                "message": f.message,
                "created_at": iso(f.created_at),
                "finished_at": iso(f.finished_at),
            }
            for f in rows
        ],
    }
