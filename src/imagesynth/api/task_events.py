"""A DashScope task's progress stream: the events GET /api/v1/tasks/{id}/events sends.

    id:1
    event:status
    data:{"task_id": "...", "task_status": "RUNNING"}

    id:2
    event:progress
    data:{"task_id": "...", "task_status": "RUNNING", "step": 3, "steps": 20,
          "preview": "data:image/jpeg;base64,..."}      (preview: with ?previews=true)

    id:3
    event:result
    data:{...exactly what GET /api/v1/tasks/{id} answers...}

`status` comes with each status change, `progress` with each recorded step (and one more
for each new preview, which carries it), `result` once the task has ended (or at once for an
unknown task), and then the stream ends. Comment lines keep an idle connection open.
docs/progress-streams.md has more.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from imagesynth.api import sse
from imagesynth.api.context import request_id_of, services_of, url_for
from imagesynth.api.schemas import task_reply, unknown_task_reply
from imagesynth.api.task_stream import ClientLeft, follow
from imagesynth.domain import TaskStatus
from imagesynth.tasks.models import Task


async def task_events(
    request: Request, task_id: str, task: Task | None, with_previews: bool
) -> AsyncIterator[bytes]:
    svc = services_of(request)
    rid = request_id_of(request)
    if task is None:
        yield sse.frame(1, "result", 200, unknown_task_reply(rid, task_id))
        return
    event_id, status, step, previews = 0, None, -1, 0
    last = task
    try:
        async for current in follow(request, task):
            if current is None:
                yield sse.KEEP_ALIVE
                continue
            last = current
            if current.status != status:
                status = current.status
                event_id += 1
                yield sse.frame(
                    event_id, "status", 200, {"task_id": task.id, "task_status": str(status)}
                )
            if current.status == TaskStatus.RUNNING and (
                current.progress_step != step or current.previews_made != previews
            ):
                step = current.progress_step
                event: dict[str, Any] = {
                    "task_id": task.id,
                    "task_status": str(current.status),
                    "step": step,
                    "steps": current.progress_total,
                }
                # Each preview made since the last event, in order, none skipped.
                for index in range(previews, current.previews_made if with_previews else 0):
                    data = await run_in_threadpool(svc.blobs.read, current.preview_key(index))
                    if data is not None:
                        event_id += 1
                        url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
                        yield sse.frame(event_id, "progress", 200, {**event, "preview": url})
                previews = current.previews_made
                event_id += 1
                yield sse.frame(event_id, "progress", 200, event)
    except ClientLeft:
        return
    spec = svc.catalog.models.get(last.model)
    # follow() ends on the final snapshot, or when the task has expired (then it reads UNKNOWN).
    reply = (
        task_reply(rid, last, spec, url_for(request))
        if last.status.is_final
        else unknown_task_reply(rid, task.id)
    )
    yield sse.frame(event_id + 1, "result", 200, reply)
