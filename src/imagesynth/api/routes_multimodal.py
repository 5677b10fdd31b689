"""The messages-protocol endpoints: `multimodal-generation/generation` (synchronous; Qwen-Image,
qwen-image-max, z-image-turbo, wan2.6) and `image-generation/generation` (wan2.6: a task with
X-DashScope-Async, else synchronous). Both take `input.messages` with one user text, and both
stream when asked to (api/sse.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

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
from imagesynth.api.endpoints import PATHS, served_on
from imagesynth.api.schemas import MultimodalRequest, multimodal_reply
from imagesynth.api.sse import mark_stream
from imagesynth.api.sync_reply import answer, succeeded
from imagesynth.catalog import ModelSpec
from imagesynth.errors import AccessDenied
from imagesynth.tasks.models import Task

router = APIRouter()

_STREAM_HEADERS = [
    openapi.header(
        "X-DashScope-SSE",
        "enable: answer as Server-Sent Events (so does Accept: text/event-stream).",
        type="string",
        enum=["enable"],
    ),
    openapi.WORKSPACE,
    openapi.CALLBACK_URL,
]


async def _accept(request: Request, endpoint: str) -> tuple[ModelSpec, Task]:
    """Authenticate, parse and queue a messages-protocol call made on `endpoint`."""
    key = await authenticate(request)
    body = MultimodalRequest.parse(await read_json_object(request))
    spec = served_on(services_of(request).catalog.get(body.model), endpoint)
    return spec, await submit_task(
        request, key, spec.name, body.generation_fields(), callback_url=body.callback_url
    )


async def _answer_sync(
    request: Request, spec: ModelSpec, task: Task
) -> dict[str, Any] | StreamingResponse:
    rid, urls = request_id_of(request), url_for(request)
    return await answer(request, task, lambda t: multimodal_reply(rid, succeeded(t), spec, urls))


@router.post(
    PATHS["multimodal"],
    response_model=None,
    openapi_extra=openapi.operation(body=MultimodalRequest, parameters=_STREAM_HEADERS),
)
async def generate(request: Request) -> dict[str, Any] | StreamingResponse:
    mark_stream(request)
    if is_async(request):
        await authenticate(request)  # a bad key is still told so first
        raise AccessDenied("current user api does not support asynchronous calls")
    spec, task = await _accept(request, "multimodal")
    return await _answer_sync(request, spec, task)


@router.post(
    PATHS["image-generation"],
    response_model=None,
    openapi_extra=openapi.operation(
        body=MultimodalRequest,
        parameters=[
            openapi.header(
                "X-DashScope-Async",
                "enable: answer with a task id at once; without it the call waits.",
                type="string",
                enum=["enable"],
            ),
            *_STREAM_HEADERS,
        ],
    ),
)
async def generate_task(request: Request) -> dict[str, Any] | StreamingResponse:
    asynchronous = is_async(request)
    if not asynchronous:
        mark_stream(request)  # a task id is answered as JSON, stream or not
    spec, task = await _accept(request, "image-generation")
    if asynchronous:
        return {
            "request_id": request_id_of(request),
            "output": {"task_id": task.id, "task_status": str(task.status)},
        }
    return await _answer_sync(request, spec, task)
