"""Submit, query, cancel and list: the DashScope task endpoints."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from imagesynth.api import openapi, sse
from imagesynth.api.context import (
    authenticate,
    is_async,
    query_text,
    read_json_object,
    request_id_of,
    services_of,
    submit_task,
    url_for,
)
from imagesynth.api.endpoints import PATHS, served_on
from imagesynth.api.references import reference_loader
from imagesynth.api.schemas import (
    SynthesisRequest,
    list_item,
    task_reply,
    unknown_task_reply,
)
from imagesynth.api.sync_wait import wait_for_end
from imagesynth.api.task_events import task_events
from imagesynth.domain import TaskStatus, parse_digits
from imagesynth.errors import AccessDenied, InvalidParameter
from imagesynth.tasks.models import Task, TaskFilter

router = APIRouter()

REGION = "local"
LIST_WINDOW_SECONDS = 24 * 3600
MAX_PAGE_SIZE = 100
PAGE_NO_MAX = 1_000_000

_TIME: dict[str, Any] = {"type": "string", "pattern": r"^\d{14}$"}
_LIST_DOC = openapi.operation(
    parameters=[
        openapi.query("start_time", "YYYYMMDDhhmmss; the window is at most 24 h.", **_TIME),
        openapi.query("end_time", "YYYYMMDDhhmmss; default now, or start_time + 24 h.", **_TIME),
        openapi.query("model_name", "Only this model's tasks."),
        openapi.query("status", "Only tasks in this state.", type="string", enum=list(TaskStatus)),
        openapi.query("task_id", "Only this task."),
        openapi.query("page_no", "From 1.", type="integer", minimum=1, maximum=PAGE_NO_MAX),
        openapi.query("page_size", "Default 10.", type="integer", minimum=1, maximum=MAX_PAGE_SIZE),
        openapi.WORKSPACE,
    ]
)


@router.post(
    PATHS["text2image"],
    openapi_extra=openapi.operation(
        body=SynthesisRequest,
        parameters=[
            openapi.header(
                "X-DashScope-Async",
                "enable: answer with a task id at once (required but for wan2.2).",
                type="string",
                enum=["enable"],
            ),
            openapi.WORKSPACE,
            openapi.header(
                "X-DashScope-OssResourceResolve", "enable: ref_img is an oss:// upload."
            ),
            openapi.CALLBACK_URL,
        ],
    ),
)
async def submit(request: Request) -> dict[str, Any]:
    svc = services_of(request)
    key = await authenticate(request)
    body = SynthesisRequest.parse(await read_json_object(request))
    spec = served_on(svc.catalog.get(body.model), "text2image")
    synchronous = not is_async(request)
    if synchronous and not spec.sync:
        raise AccessDenied("current user api does not support synchronous calls")
    assert body.input is not None
    reference_url = body.input.reference
    task = await submit_task(
        request,
        key,
        spec.name,
        body.generation_fields(),
        reference=None if reference_url is None else reference_loader(request, key, reference_url),
        callback_url=body.callback_url,
    )
    if not synchronous:
        return {
            "request_id": request_id_of(request),
            "output": {"task_id": task.id, "task_status": str(task.status)},
        }
    task = await wait_for_end(request, task)
    return task_reply(request_id_of(request), task, spec, url_for(request))


_STREAM_DOC = openapi.operation(
    parameters=[
        openapi.query(
            "previews",
            "true: progress events carry the latest preview image (tasks that asked for "
            "partial_images) as a data: URL.",
            type="boolean",
        )
    ]
)


@router.get(
    "/api/v1/tasks/{task_id}",
    response_model=None,
    openapi_extra=openapi.operation(
        parameters=[
            openapi.header(
                "Accept",
                "text/event-stream: follow the task as events (as .../events does).",
                type="string",
            )
        ]
    ),
)
async def query(request: Request, task_id: str) -> dict[str, Any] | StreamingResponse:
    if sse.wants_stream(request):
        return await events(request, task_id)
    svc = services_of(request)
    key = await authenticate(request)
    task = await run_in_threadpool(svc.tasks.get, key, task_id)
    if task is None:
        return unknown_task_reply(request_id_of(request), task_id)
    spec = svc.catalog.models.get(task.model)
    return task_reply(request_id_of(request), task, spec, url_for(request))


@router.get("/api/v1/tasks/{task_id}/events", openapi_extra=_STREAM_DOC)
async def events(request: Request, task_id: str) -> StreamingResponse:
    """The task's progress as Server-Sent Events (docs/progress-streams.md): `status` on each
    status change, `progress` on each step (with `preview` when asked), then `result` with
    the query reply, and the stream ends."""
    sse.mark_stream(request)
    svc = services_of(request)
    key = await authenticate(request)
    task = await run_in_threadpool(svc.tasks.get, key, task_id)
    with_previews = (request.query_params.get("previews") or "").lower() in ("true", "1")
    return StreamingResponse(
        task_events(request, task_id, task, with_previews),
        media_type=sse.MEDIA_TYPE,
        headers=sse.HEADERS,
    )


@router.post("/api/v1/tasks/{task_id}/cancel", openapi_extra=openapi.operation())
async def cancel(request: Request, task_id: str) -> dict[str, Any]:
    svc = services_of(request)
    key = await authenticate(request)
    await run_in_threadpool(svc.tasks.cancel, key, task_id)
    return {"request_id": request_id_of(request)}


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse_digits(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
        raise InvalidParameter(f"{name} must be an integer in [{low}, {high}]; got {shown!r}")
    return value


def _time_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return datetime.strptime(raw, "%Y%m%d%H%M%S").timestamp()
    except ValueError:
        raise InvalidParameter(f"{name} must be YYYYMMDDhhmmss; got {raw!r}") from None


def _list_filter(request: Request) -> TaskFilter:
    start, end = _time_param(request, "start_time"), _time_param(request, "end_time")
    if start is None and end is None:
        end = time.time()
    if start is None:
        assert end is not None
        start = end - LIST_WINDOW_SECONDS
    if end is None:
        end = start + LIST_WINDOW_SECONDS
    if end < start:
        raise InvalidParameter("end_time must not be before start_time")
    if end - start > LIST_WINDOW_SECONDS:
        raise InvalidParameter("The time window between start_time and end_time is at most 24 h")
    status = request.query_params.get("status") or None
    if status is not None and status not in TaskStatus.__members__:
        raise InvalidParameter(f"status must be one of {', '.join(TaskStatus)}; got {status!r}")
    return TaskFilter(
        # Timestamps are whole seconds: include the whole last second.
        start=start,
        end=end + 0.999,
        model=query_text(request, "model_name"),
        status=TaskStatus(status) if status else None,
        task_id=query_text(request, "task_id"),
        workspace=request.headers.get("x-dashscope-workspace"),
    )


@router.get("/api/v1/tasks", openapi_extra=_LIST_DOC)
async def list_tasks(request: Request) -> dict[str, Any]:
    svc = services_of(request)
    key = await authenticate(request)
    flt = _list_filter(request)
    page_no = _int_param(request, "page_no", 1, 1, PAGE_NO_MAX)
    page_size = _int_param(request, "page_size", 10, 1, MAX_PAGE_SIZE)
    if flt.status == TaskStatus.UNKNOWN:
        total, tasks = 0, list[Task]()
    else:
        total, tasks = await run_in_threadpool(svc.tasks.list, key, flt, page_no, page_size)
    items = [list_item(t, svc.catalog.models.get(t.model), REGION) for t in tasks]
    return {
        "request_id": request_id_of(request),
        "total": total,
        "total_page": (total + page_size - 1) // page_size,
        "page_no": page_no,
        "page_size": page_size,
        # The 1.x SDK reads `data`, the 2.0 client (`Client().images.jobs.list`) `tasks`.
        "data": items,
        "tasks": items,
    }
