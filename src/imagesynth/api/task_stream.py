"""Following one task as it runs: the snapshots a progress stream sends.

Both streams build on `follow`: the DashScope task's event stream (GET /api/v1/tasks/{id}
with Accept: text/event-stream, or .../events; routes_tasks.py) and the OpenAI front's
`stream=true` (routes_openai.py). It reads the task from the store whenever the task's
`progress` or `ended` event arrives (tasks/events.py: in-process, or PostgreSQL NOTIFY from
the worker's process) and otherwise every half second, so it works whichever process runs the
worker, and a client that left is noticed within that half second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from imagesynth.api.context import services_of
from imagesynth.tasks.models import Task
from imagesynth.tasks.ports import TaskEvents

POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0


class ClientLeft(Exception):
    """The client of a stream hung up."""


class OutOfTime(Exception):
    """The task did not end before the stream's deadline."""


async def follow(
    request: Request, task: Task, deadline: float | None = None
) -> AsyncIterator[Task | None]:
    """The task each time its status, step or previews changed (first as it is now), until it
    has ended; None every KEEP_ALIVE_SECONDS without a change, so the caller can send a
    keep-alive. Raises ClientLeft when the client hangs up, OutOfTime past `deadline` (a
    time.monotonic() value); a task that expired mid-stream (retention) ends the iteration."""
    svc = services_of(request)
    changed = asyncio.Event()
    unsubscribe = _on_change(svc.events, task.id, changed)
    last: tuple[object, ...] | None = None
    quiet_since = time.monotonic()
    try:
        while True:
            changed.clear()  # before the read: an event during it is not lost
            current = await run_in_threadpool(svc.tasks.store.get_task, task.id)
            if current is None:
                return
            seen = (current.status, current.progress_step, current.previews_made)
            if seen != last:
                last, quiet_since = seen, time.monotonic()
                yield current
                if current.status.is_final:
                    return
            elif time.monotonic() - quiet_since >= KEEP_ALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield None
            if await request.is_disconnected():
                raise ClientLeft()
            if deadline is not None and time.monotonic() > deadline:
                raise OutOfTime()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), POLL_SECONDS)
    finally:
        unsubscribe()


def _on_change(
    events: TaskEvents | None, task_id: str, changed: asyncio.Event
) -> Callable[[], None]:
    if events is None:
        return lambda: None
    loop = asyncio.get_running_loop()

    def wake(_: str) -> None:
        loop.call_soon_threadsafe(changed.set)

    return events.on_change(task_id, wake)
