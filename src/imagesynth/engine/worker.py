"""The worker: claim a task, run it on its pipeline, store the images, finish (fenced).

One worker runs one pipeline call at a time. A heartbeat thread, not the one running the
pipeline, keeps the leases alive and learns of cancellations; the step callback checks them.
A worker killed outright simply stops heartbeating: its lease runs out and the maintenance pass
hands the task to another worker (design/task-queue.md).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from imagesynth.catalog import Catalog, ModelSpec
from imagesynth.engine.base import Adapter, EngineSpec, GenerationBatch
from imagesynth.engine.registry import create_adapter
from imagesynth.inputs.reference import cover, style_only
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.png import encode_png
from imagesynth.tasks.models import ImageResult, Task, TaskStatus
from imagesynth.tasks.store_sql import SqlStore

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25


class _Cancelled(Exception):
    """The client cancelled the running task."""


class _ShuttingDown(Exception):
    """This worker is stopping: hand the task back."""


def reference_start(
    path: Path | None, width: int, height: int, mode: str | None, ref_strength: float
) -> tuple[Image.Image, float]:
    """The image-to-image start for a wanx-v1 reference, and how far to denoise from it.

    repaint: the reference itself; ref_strength 1.0 keeps closest (denoise 10%), 0.0 redraws
    almost everything (100%). refonly (no image-prompt adapter configured): the reference
    blurred until only its palette and light remain, denoised 50%..100%, so the result takes
    its colours and mood but not its content."""
    if path is None:
        raise FileNotFoundError("the task's reference image is gone")
    with Image.open(path) as stored:
        image = cover(stored.convert("RGB"), width, height)
    if mode == "refonly":
        return style_only(image), 1.0 - 0.5 * ref_strength
    return image, 1.0 - 0.9 * ref_strength


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        store: SqlStore,
        blobs: LocalBlobStore,
        catalog: Catalog,
        demo_root: Path,
        *,
        lease_seconds: float,
        poll_seconds: float,
        models: Sequence[str] | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.demo_root = demo_root
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.models = list(models) if models else list(catalog.models)
        self.worker_id = worker_id or new_worker_id()
        self._adapters: dict[EngineSpec, Adapter] = {}
        self._cancel_requested: set[str] = set()
        self._stop = threading.Event()

    # -- setup ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build demo weights if a served model needs them (offline, once per home)."""
        demo = [m for m in self.models if self.catalog.get(m).is_demo]
        if not demo:
            return
        from imagesynth.engine.demo import build_demo_weights

        log.warning(
            "models %s use DEMO weights: tiny random-weight pipelines whose images are noise. "
            "Point the catalog at real weights to get real images.",
            ", ".join(demo),
        )
        build_demo_weights(self.demo_root)

    def _adapter(self, spec: ModelSpec) -> Adapter:
        engine_spec = spec.engine_spec(self.demo_root)
        adapter = self._adapters.get(engine_spec)
        if adapter is None:
            started = time.monotonic()
            adapter = create_adapter(engine_spec)
            adapter.load()
            self._adapters[engine_spec] = adapter
            log.info(
                "loaded %s pipeline from %s in %.1fs",
                engine_spec.family,
                engine_spec.weights,
                time.monotonic() - started,
            )
        return adapter

    # -- loop -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Work until stop() (or `stop` is set). A task running then is handed back."""
        if stop is not None:

            def relay() -> None:
                stop.wait()
                self.stop()

            threading.Thread(target=relay, name="stop-relay", daemon=True).start()
        self.prepare()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        log.info("worker %s serving %s", self.worker_id, ", ".join(self.models))
        while not self._stop.is_set():
            try:
                task = self.store.claim(self.worker_id, self.models, self.lease_seconds)
            except Exception:
                log.exception("claim failed; retrying")
                self._stop.wait(1.0)
                continue
            if task is None:
                self._stop.wait(self.poll_seconds)
                continue
            self.execute(task)

    def _heartbeat_loop(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                self._cancel_requested = self.store.heartbeat(self.worker_id, self.lease_seconds)
            except Exception:
                log.exception("heartbeat failed")

    # -- one task -------------------------------------------------------------------------

    def execute(self, task: Task) -> None:
        attempt = task.attempts
        log.info("task %s attempt %d: %s started", task.id, attempt, task.model)
        started = time.monotonic()
        try:
            spec = self.catalog.get(task.model)
            adapter = self._adapter(spec)
            images = adapter.generate(self._batch(task, spec), self._on_step(task))
            generated = time.monotonic()
            results = []
            for i, image in enumerate(images):
                key = f"{task.id}/{attempt}/{i}.png"
                self.blobs.put(key, encode_png(image))
                results.append(ImageResult(blob_key=key, actual_prompt=task.effective_prompt))
        except _ShuttingDown:
            self.store.release(task.id, self.worker_id, attempt)
            log.info("task %s handed back on shutdown", task.id)
            return
        except _Cancelled:
            self._finish(task, TaskStatus.CANCELED)
            return
        except Exception:
            log.exception("task %s failed", task.id)
            self._finish(
                task,
                TaskStatus.FAILED,
                error_code="InternalError.Algo",
                error_message="Image generation failed inside the model pipeline.",
            )
            return
        if self._finish(task, TaskStatus.SUCCEEDED, results=results):
            log.info(
                "task %s succeeded in %.2fs (pipeline %.2fs)",
                task.id,
                time.monotonic() - started,
                generated - started,
            )

    def _finish(
        self,
        task: Task,
        status: TaskStatus,
        results: Sequence[ImageResult] = (),
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        done = self.store.finish(
            task.id, self.worker_id, task.attempts, status, results, error_code, error_message
        )
        if not done:
            # The lease ran out and the task went to another attempt: ours is void.
            log.warning("task %s attempt %d lost its lease; discarding", task.id, task.attempts)
            self.blobs.delete_prefix(f"{task.id}/{task.attempts}")
        return done

    def _batch(self, task: Task, spec: ModelSpec) -> GenerationBatch:
        p = task.params
        prompt, negative_prompt = task.effective_prompt, p.negative_prompt
        style = spec.style_table.get(p.style) if p.style else None
        if style is not None:
            prompt, negative_prompt = style.apply(prompt, negative_prompt)
        init_image, strength = None, 1.0
        if p.ref_image_key is not None and p.ref_strength is not None:
            init_image, strength = reference_start(
                self.blobs.path(p.ref_image_key), p.width, p.height, p.ref_mode, p.ref_strength
            )
        return GenerationBatch(
            init_image=init_image,
            strength=strength,
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=p.width,
            height=p.height,
            seeds=tuple(p.seed + i for i in range(p.n)),
            steps=p.steps,
            guidance=p.guidance,
        )

    def _on_step(self, task: Task):  # type: ignore[no-untyped-def]
        last_write = 0.0

        def on_step(step: int, total: int) -> None:
            nonlocal last_write
            if self._stop.is_set():
                raise _ShuttingDown()
            if task.id in self._cancel_requested:
                raise _Cancelled()
            now = time.monotonic()
            if now - last_write >= PROGRESS_INTERVAL_SECONDS and step < total:
                last_write = now
                self.store.set_progress(task.id, self.worker_id, task.attempts, step)

        return on_step
