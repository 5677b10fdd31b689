"""Qwen-Image's synchronous endpoint: POST .../multimodal-generation/generation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from imagesynth.api import openapi
from imagesynth.api.context import (
    authenticate,
    is_async,
    read_json_object,
    request_id_of,
    services_of,
    submit_task,
    url_for,
)
from imagesynth.api.schemas import MultimodalRequest, multimodal_reply
from imagesynth.api.sync_wait import wait_for_end
from imagesynth.domain import TaskStatus
from imagesynth.errors import AccessDenied, InvalidParameter, SyncTimeout, TaskFailed

router = APIRouter()


@router.post(
    "/api/v1/services/aigc/multimodal-generation/generation",
    openapi_extra=openapi.operation(body=MultimodalRequest),
)
async def generate(request: Request) -> dict[str, Any]:
    svc = services_of(request)
    key = await authenticate(request)
    if is_async(request):
        raise AccessDenied("current user api does not support asynchronous calls")
    body = MultimodalRequest.parse(await read_json_object(request))
    spec = svc.catalog.get(body.model)
    if spec.family != "qwen-image":
        raise InvalidParameter(
            f"Model {spec.name} is not served on this endpoint; use text2image/image-synthesis"
        )
    task = await submit_task(request, key, spec.name, body.generation_fields())
    task = await wait_for_end(request, task)
    if task.status == TaskStatus.FAILED:
        raise TaskFailed(task.error_code or "InternalError", task.error_message or "")
    if task.status != TaskStatus.SUCCEEDED:
        raise SyncTimeout()
    return multimodal_reply(request_id_of(request), task, url_for(request))
