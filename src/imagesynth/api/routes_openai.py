"""The OpenAI Images API: POST /v1/images/generations and GET /v1/models (docs/openai.md).

An OpenAI call *is* a task: it is submitted through the same TaskService as a DashScope one
(keys, rate limits, quotas, moderation, labels, billing), shows in the DashScope task list and
in usage, and the request waits for it as a synchronous DashScope call does (a caller that
hangs up cancels it). Only the shapes differ: the request (api/openai_schemas.py), the reply,
the errors (api/openai_errors.py) and the stream of partial images.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from imagesynth.api import openapi, sse
from imagesynth.api.context import (
    Services,
    authenticate,
    read_json_object,
    request_id_of,
    services_of,
    submit_task,
    url_for,
)
from imagesynth.api.errors import answer_for
from imagesynth.api.openai_errors import error_body
from imagesynth.api.openai_schemas import ImageGeneration, ImageGenerationBody, openai_size
from imagesynth.api.sync_reply import succeeded
from imagesynth.api.sync_wait import wait_for_end
from imagesynth.api.task_stream import ClientLeft, OutOfTime, follow
from imagesynth.errors import ImageSynthError, ModelNotFound, ResourceNotFound, SyncTimeout
from imagesynth.storage.png import encode_image
from imagesynth.tasks.models import Task

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

# OpenAI's gpt-image usage object; images here are not counted in tokens.
_NO_TOKENS = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


@router.get("/models", openapi_extra=openapi.operation())
async def list_models(request: Request) -> dict[str, Any]:
    await authenticate(request)
    catalog = services_of(request).catalog
    return {"object": "list", "data": [_model(name) for name in catalog.models]}


@router.get("/models/{model}", openapi_extra=openapi.operation())
async def show_model(request: Request, model: str) -> dict[str, Any]:
    await authenticate(request)
    if model not in services_of(request).catalog.models:
        raise ResourceNotFound(f"The model '{model}' does not exist", param="model")
    return _model(model)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "imagesynth"}


@router.post(
    "/images/generations",
    response_model=None,
    openapi_extra=openapi.operation(body=ImageGenerationBody),
)
async def generate(request: Request) -> dict[str, Any] | StreamingResponse:
    svc = services_of(request)
    key = await authenticate(request)
    call = ImageGeneration.parse(await read_json_object(request))
    name = call.body.model or svc.settings.openai_default_model
    if name not in svc.catalog.models:
        raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    spec = svc.catalog.models[name]
    task = await submit_task(
        request, key, spec.name, call.task_fields(spec), callback_url=call.body.callback_url
    )
    if call.stream:
        return StreamingResponse(
            _stream(request, call, task), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS
        )
    ended = succeeded(await wait_for_end(request, task))
    return {
        "created": int(ended.finished_at or time.time()),
        "data": await run_in_threadpool(_images, request, call, ended),
        "background": "opaque",
        "output_format": call.output_format,
        "size": openai_size(ended.params.width, ended.params.height),
        "quality": _quality(call),
    }


def _quality(call: ImageGeneration) -> str:
    return "high" if call.quality == "auto" else call.quality


def _images(request: Request, call: ImageGeneration, task: Task) -> list[dict[str, Any]]:
    """One entry per stored image: its URL and/or its bytes, and the rewritten prompt."""
    svc, urls = services_of(request), url_for(request)
    data = []
    for result in task.results:
        if result.blob_key is None:
            continue  # withheld by the image check: the reply holds the images that passed
        item: dict[str, Any] = {}
        if "url" in call.response_formats:
            item["url"] = urls(result.blob_key)
        if "b64_json" in call.response_formats:
            stored = svc.blobs.read(result.blob_key)
            if stored is None:
                raise ResourceNotFound("The image has expired.")
            item["b64_json"] = base64.b64encode(stored).decode()
        if task.params.prompt_extend and result.actual_prompt not in (None, task.params.prompt):
            item["revised_prompt"] = result.actual_prompt
        data.append(item)
    return data


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return sse.event(kind, {"type": kind, **body})


async def _stream(request: Request, call: ImageGeneration, task: Task) -> AsyncIterator[bytes]:
    """`image_generation.partial_image` for each preview the worker stores, then one
    `image_generation.completed` per image; an error event if the task fails."""
    svc = services_of(request)
    shape = {
        "background": "opaque",
        "output_format": call.output_format,
        "quality": call.quality,
        "size": openai_size(task.params.width, task.params.height),
    }
    sent, last, done = 0, task, False
    failure: ImageSynthError | None = None
    deadline = time.monotonic() + svc.settings.sync_timeout_seconds
    try:
        async for current in follow(request, task, deadline):
            if current is None:
                yield sse.KEEP_ALIVE
                continue
            last = current
            while sent < current.previews_made:
                partial = await run_in_threadpool(_partial_image, svc, current, sent, call)
                if partial is not None:
                    body = {**shape, "b64_json": partial, "partial_image_index": sent}
                    yield _event("image_generation.partial_image", {**body, "created_at": _now()})
                sent += 1
        done = True
    except ClientLeft:
        pass
    except OutOfTime:
        failure = SyncTimeout()
    finally:
        if not done:
            # The caller left mid-stream, or the task took too long: nobody will fetch it.
            log.info("task %s: OpenAI stream ended before the task; cancelling", task.id)
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(svc.tasks.abandon, task.id)
    if not done and failure is None:
        return  # the caller left: nobody to tell
    try:
        if failure is not None:
            raise failure
        ended = succeeded(last)
        images = await run_in_threadpool(_images, request, _b64_only(call), ended)
    except ImageSynthError as exc:
        status, code, message = answer_for(request_id_of(request), exc)
        yield sse.event("error", error_body(status, code, message, exc.param))
        return
    for image in images:
        body = {**shape, "b64_json": image["b64_json"], "usage": _NO_TOKENS}
        yield _event("image_generation.completed", {**body, "created_at": _now()})


def _b64_only(call: ImageGeneration) -> ImageGeneration:
    return dataclasses.replace(call, response_formats=("b64_json",))


def _partial_image(svc: Services, task: Task, index: int, call: ImageGeneration) -> str | None:
    """Preview `index`, at the requested size and in the requested format, as base64."""
    stored = svc.blobs.read(task.preview_key(index))
    if stored is None:
        return None
    with Image.open(io.BytesIO(stored)) as preview:
        sized = preview.convert("RGB").resize(
            (task.params.width, task.params.height), Image.Resampling.BILINEAR
        )
    return base64.b64encode(encode_image(sized, call.output_format, 90)).decode()


def _now() -> int:
    return int(time.time())
