"""Holding a synchronous request until its task ends.

A synchronous call is an ordinary task: it waits in the same queue, under the same lease
protocol, as every other. Only the HTTP request waits; if the caller hangs up (or the wait
times out), the task is cancelled so no worker spends time on an image nobody will fetch.

The wait reads the task when its `ended` event arrives (tasks/events.py: in-process, or
PostgreSQL NOTIFY from any worker), and otherwise every half second, which is also when it
notices a caller that left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from imagesynth.api.context import services_of
from imagesynth.tasks.models import Task
from imagesynth.tasks.ports import TaskEvents

log = logging.getLogger(__name__)

_FIRST_POLL_SECONDS = 0.05  # without events: the first look, then 1.5x longer each time
_MAX_POLL_SECONDS = 0.5


async def wait_for_end(request: Request, task: Task) -> Task:
    """The task once it has ended; or, after a disconnect or the sync timeout, as it stands
    once its cancellation was asked for."""
    svc = services_of(request)
    store = svc.tasks.store
    deadline = time.monotonic() + svc.settings.sync_timeout_seconds
    ended = asyncio.Event()
    unsubscribe = _on_ended(svc.events, task.id, ended)
    delay = _MAX_POLL_SECONDS if svc.events is not None else _FIRST_POLL_SECONDS
    try:
        while True:
            ended.clear()  # before the read: an event during it is not lost
            current = await run_in_threadpool(store.get_task, task.id)
            if current is None or current.status.is_final:
                return current or task
            timed_out = time.monotonic() > deadline
            if timed_out or await request.is_disconnected():
                log.info(
                    "task %s: synchronous caller %s; cancelling",
                    task.id,
                    "timed out" if timed_out else "went away",
                )
                await run_in_threadpool(svc.tasks.abandon, task.id)
                return await run_in_threadpool(store.get_task, task.id) or current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), delay)
            if svc.events is None:
                delay = min(delay * 1.5, _MAX_POLL_SECONDS)
    finally:
        unsubscribe()


def _on_ended(events: TaskEvents | None, task_id: str, ended: asyncio.Event) -> Callable[[], None]:
    """Set `ended` (on this loop, from whichever thread publishes) when the task ends."""
    if events is None:
        return lambda: None
    loop = asyncio.get_running_loop()

    def wake(_: str) -> None:
        loop.call_soon_threadsafe(ended.set)

    return events.on_ended(task_id, wake)
