"""Post-processing off the generation thread: check, label, encode and store a task's images
on a bounded pool, so the engine starts the next task as soon as a call returns.

Per image, the classifier and the labeller (visible mark, invisible watermark, PNG encode) run
as two jobs at once: both spend most of their time in code that releases the GIL (onnxruntime
or torch, numpy, zlib). The image is stored only when both are done and the classifier let it
through, so a flagged image is never written. At most `capacity` tasks are in post-processing at
once (their decoded images are the memory it holds); the generation thread waits for room
before it claims more work (docs/task-queue.md#the-pipelined-worker).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from imagesynth.catalog import ModelSpec
from imagesynth.tasks.models import ImageResult, Task

log = logging.getLogger(__name__)


@dataclass
class Generated:
    """A task whose images the engine has made, on its way to being stored and finished."""

    task: Task
    spec: ModelSpec
    images: list[Image.Image]
    started: float  # time.monotonic() when the worker took it up
    generated: float  # ... and when the engine returned its images
    results: list[ImageResult | None] = field(default_factory=list)
    error: BaseException | None = None  # the first failure of any of its jobs


# Classify image i: None lets it through, else the slot that replaces it.
Classify = Callable[[Generated, int], ImageResult | None]
# Label and encode image i: the bytes to store.
Encode = Callable[[Generated, int], bytes]
# Store image i's bytes: its result slot.
Store = Callable[[Generated, int, bytes], ImageResult]
# Every image is done (or one failed: `error` is set): finish the task.
Conclude = Callable[[Generated], None]


@dataclass(frozen=True)
class Steps:
    """What post-processing does, as the worker defines it."""

    classify: Classify
    encode: Encode
    store: Store
    conclude: Conclude


class PostProcessing:
    """The bounded pool. `threads` jobs run at once; `capacity` tasks may be inside."""

    def __init__(self, steps: Steps, threads: int, capacity: int) -> None:
        self.steps = steps
        self._pool = ThreadPoolExecutor(
            max(threads, 1), thread_name_prefix="postprocess", initializer=_yield_to_the_engine
        )
        self._room = threading.Semaphore(max(capacity, 1))

    def wait_for_room(self, stop: threading.Event, poll: float = 0.1) -> bool:
        """Block until another task may enter; False if `stop` was set meanwhile."""
        while not stop.is_set():
            if self._room.acquire(timeout=poll):
                self._room.release()
                return True
        return False

    def submit(self, generated: Generated) -> None:
        """Post-process in the background; `conclude` runs on a pool thread at the end."""
        self._room.acquire()
        _TaskJobs(generated, self.steps, self._pool, self._room.release).start()

    def shutdown(self) -> None:
        """Wait for every task inside to conclude (each sees the worker stopping and hands its
        task back rather than storing more)."""
        self._pool.shutdown(wait=True)


# The pool's threads' niceness: above the engine's, so that where the engine computes on the
# CPU the kernel runs its threads first and post-processing takes the time they leave idle.
POOL_NICENESS = 10


def _yield_to_the_engine() -> None:
    """Lower this pool thread's scheduling priority (Linux: per thread; elsewhere a no-op)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), POOL_NICENESS)


def process_inline(generated: Generated, steps: Steps) -> None:
    """The same work on the calling thread, one job after another (Worker.execute)."""
    generated.results = [None] * len(generated.images)
    try:
        for i in range(len(generated.images)):
            withheld = steps.classify(generated, i)
            generated.results[i] = withheld or steps.store(generated, i, steps.encode(generated, i))
    except Exception as exc:
        generated.error = exc
    steps.conclude(generated)


class _TaskJobs:
    """One task's jobs and the countdown to its conclusion."""

    def __init__(
        self,
        generated: Generated,
        steps: Steps,
        pool: ThreadPoolExecutor,
        on_concluded: Callable[[], None],
    ) -> None:
        self.generated = generated
        self.steps = steps
        self.pool = pool
        self.on_concluded = on_concluded
        self._lock = threading.Lock()
        self._images_left = len(generated.images)
        generated.results = [None] * len(generated.images)

    def start(self) -> None:
        if not self.generated.images:
            self._conclude()
            return
        for i in range(len(self.generated.images)):
            verdict = self.pool.submit(self.steps.classify, self.generated, i)
            encoded = self.pool.submit(self.steps.encode, self.generated, i)
            pair = _Pair(verdict, encoded)
            verdict.add_done_callback(functools.partial(self._half_done, i, pair))
            encoded.add_done_callback(functools.partial(self._half_done, i, pair))

    def _half_done(self, index: int, pair: _Pair, _: Future[Any]) -> None:
        if not pair.both_done():
            return
        try:
            withheld = pair.verdict.result()
            data = pair.encoded.result()
            if self.generated.error is None:
                self.generated.results[index] = withheld or self.steps.store(
                    self.generated, index, data
                )
        except Exception as exc:
            with self._lock:
                if self.generated.error is None:
                    self.generated.error = exc
        with self._lock:
            self._images_left -= 1
            last = self._images_left == 0
        if last:
            self._conclude()

    def _conclude(self) -> None:
        try:
            self.steps.conclude(self.generated)
        except Exception:
            log.exception("task %s: finishing failed", self.generated.task.id)
        finally:
            self.on_concluded()


class _Pair:
    """An image's two jobs; `both_done` is true exactly once, for the second to end."""

    def __init__(self, verdict: Future[ImageResult | None], encoded: Future[bytes]) -> None:
        self.verdict = verdict
        self.encoded = encoded
        self._ended = 0
        self._lock = threading.Lock()

    def both_done(self) -> bool:
        with self._lock:
            self._ended += 1
            return self._ended == 2
