"""The admin API (/admin/v1): keys and usage, for the admin credential only.

Beyond DashScope, which administers keys in its console; the same operations as the
`imagesynth keys` and `imagesynth usage` commands.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from imagesynth.accounts.admin import AdminService
from imagesynth.api import openapi
from imagesynth.api.context import query_text, read_json_object, request_id_of, services_of
from imagesynth.api.schemas import KeyChange, KeyCreate
from imagesynth.errors import InvalidParameter

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
