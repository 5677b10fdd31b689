"""The answer to a synchronous call on the messages endpoints: the reply as JSON once its
task ends, or, when the caller asked for a stream, events (api/sse.py): comments while the
task runs, then one frame with the reply, or an error frame.

Either way the task is an ordinary one (api/sync_wait.py): if the caller hangs up, or the
wait times out, it is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from imagesynth import errors
from imagesynth.api import sse
from imagesynth.api.context import request_id_of, services_of
from imagesynth.api.errors import answer_for
from imagesynth.api.sync_wait import wait_for_end
from imagesynth.domain import TaskStatus
from imagesynth.tasks.models import Task

log = logging.getLogger(__name__)

KEEP_ALIVE_SECONDS = 15.0

Reply = Callable[[Task], dict[str, Any]]  # an ended task -> the reply body, or raises


def succeeded(task: Task) -> Task:
    """The task if it succeeded; else the error a synchronous caller gets for it."""
    if task.status == TaskStatus.FAILED:
        raise errors.TaskFailed(task.error_code or "InternalError", task.error_message or "")
    if task.status != TaskStatus.SUCCEEDED:
        raise errors.SyncTimeout()
    return task


async def answer(request: Request, task: Task, reply: Reply) -> dict[str, Any] | StreamingResponse:
    """`reply(task)` for the ended task, as JSON or (sse.streams) as a stream."""
    if sse.streams(request):
        return StreamingResponse(
            _frames(request, task, reply), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS
        )
    return reply(await wait_for_end(request, task))


async def _frames(request: Request, task: Task, reply: Reply) -> AsyncIterator[bytes]:
    waiting = asyncio.ensure_future(wait_for_end(request, task))
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=KEEP_ALIVE_SECONDS)
            if not waiting.done():
                yield sse.KEEP_ALIVE
        ended = waiting.result()
    finally:
        if not waiting.done():
            # The client left (the response's disconnect listener cancelled us): nobody will
            # fetch these images, so the task goes as a hung-up synchronous call's does.
            waiting.cancel()
            log.info("task %s: streaming caller went away; cancelling", task.id)
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(services_of(request).tasks.abandon, task.id)
    request_id = request_id_of(request)
    try:
        body = reply(ended)
    except errors.ImageSynthError as exc:
        yield sse.error_frame(1, request_id, *answer_for(request_id, exc))
        return
    yield sse.frame(1, "result", 200, body)
