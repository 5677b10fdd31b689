"""Holding a synchronous request until its task ends.

A synchronous call is an ordinary task: it waits in the same queue, under the same lease
protocol, as every other. Only the HTTP request waits; if the caller hangs up (or the wait
times out), the task is cancelled so no worker spends time on an image nobody will fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from imagesynth.api.context import services_of
from imagesynth.tasks.models import Task

log = logging.getLogger(__name__)

_FIRST_POLL_SECONDS = 0.05
_MAX_POLL_SECONDS = 0.5


async def wait_for_end(request: Request, task: Task) -> Task:
    """The task once it has ended; or, after a disconnect or the sync timeout, as it stands
    once its cancellation was asked for."""
    svc = services_of(request)
    store = svc.tasks.store
    deadline = time.monotonic() + svc.settings.sync_timeout_seconds
    delay = _FIRST_POLL_SECONDS
    while True:
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
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, _MAX_POLL_SECONDS)
