"""The worker: claim a task, run it on its engine, check, label and store the images, finish
(fenced).

One worker runs one engine call at a time. A heartbeat thread, not the one running the
engine, keeps the leases alive and learns of cancellations; the step callback checks them.
A worker killed outright simply stops heartbeating: its lease runs out and the maintenance pass
hands the task to another worker (docs/task-queue.md).
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
from imagesynth.domain import TaskStatus
from imagesynth.engine.base import Engine, GenerationBatch, StepCallback
from imagesynth.errors import FailureCode
from imagesynth.labels import visible
from imagesynth.labels.aigc import ImageLabel
from imagesynth.labels.labeler import Labeler
from imagesynth.safety import audit
from imagesynth.safety.guard import Guard
from imagesynth.safety.images import ImageClassifier, NoImageClassifier, Verdict
from imagesynth.storage.blobs import BlobStore
from imagesynth.tasks.models import ImageResult, Task
from imagesynth.tasks.ports import TaskQueue
from imagesynth.worker.engines import Engines
from imagesynth.worker.references import reference_start, reference_style

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25


class _Cancelled(Exception):
    """The client cancelled the running task."""


class _ShuttingDown(Exception):
    """This worker is stopping: hand the task back."""


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def mark_text(spec: ModelSpec) -> str:
    """The visible mark of a model: the catalog's `watermark_text`, else DashScope's."""
    return spec.watermark_text or visible.default_text(spec.family)


def image_label(
    labeler: Labeler, image: Image.Image, task: Task, spec: ModelSpec, index: int
) -> ImageLabel:
    """What image `index` of `task` says about itself (labels/aigc.py writes it)."""
    p = task.params
    return ImageLabel(
        producer=labeler.producer,
        task_id=task.id,
        model=task.model,
        index=index,
        created_at=task.created_at,
        generated_at=time.time(),
        prompt=p.prompt,
        actual_prompt=task.effective_prompt,
        negative_prompt=p.negative_prompt,
        seed=p.seeds[index],
        steps=p.steps,
        guidance=p.guidance,
        width=image.width,
        height=image.height,
        style=p.style,
        visible_mark=mark_text(spec) if p.watermark else None,
        invisible_mark=labeler.invisible,
    )


def result_key(task: Task, index: int) -> str:
    """Where image `index` of this attempt is stored. The file name holds the task id, so
    clients that save each result under its URL's file name (DashScope's own samples do) keep
    every task's images apart."""
    return f"{task.id}/{task.attempts}/{task.id}-{index}.png"


class Worker:
    def __init__(
        self,
        queue: TaskQueue,
        blobs: BlobStore,
        catalog: Catalog,
        demo_root: Path,
        *,
        lease_seconds: float,
        poll_seconds: float,
        models: Sequence[str] | None = None,
        worker_id: str | None = None,
        labeler: Labeler | None = None,
        classifier: ImageClassifier | None = None,
        guard: Guard | None = None,
    ) -> None:
        """guard: a local guard model asked about each task's prompt before generation (a
        remote one screens at submit instead)."""
        self.queue = queue
        self.blobs = blobs
        self.catalog = catalog
        self.demo_root = demo_root
        self.engines = Engines(demo_root)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.models = list(models) if models else list(catalog.models)
        self.worker_id = worker_id or new_worker_id()
        self.labeler = labeler or Labeler()
        self.classifier: ImageClassifier = classifier or NoImageClassifier()
        self.guard = guard
        self._cancel_requested: set[str] = set()
        self._stop = threading.Event()

    # -- setup ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load the image classifier; build demo weights if a served model needs them
        (offline, once per home)."""
        log.info(self.classifier.describe())
        self.classifier.load()
        if self.guard is not None:
            log.info(self.guard.model.describe())
            try:
                self.guard.model.load()
            except Exception:
                # Its verdicts are errors from now on; IMAGESYNTH_GUARD_FAIL decides them.
                log.exception("prompt guard failed to load")
        demo = [m for m in self.models if self.catalog.get(m).is_demo]
        if not demo:
            return
        from imagesynth.engine.diffusers.demo import build_demo_weights

        log.warning(
            "models %s use DEMO weights: tiny random-weight pipelines whose images are noise. "
            "Point the catalog at real weights to get real images.",
            ", ".join(demo),
        )
        build_demo_weights(self.demo_root)

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
            if not self.run_once():
                self._stop.wait(self.poll_seconds)

    def run_once(self) -> bool:
        """Claim and run one task; False when there was none (or the claim failed)."""
        try:
            task = self.queue.claim(self.worker_id, self.models, self.lease_seconds)
        except Exception:
            log.exception("claim failed; retrying")
            self._stop.wait(1.0)
            return False
        if task is None:
            return False
        self.execute(task)
        return True

    def _heartbeat_loop(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while not self._stop.wait(interval):
            self.heartbeat()

    def heartbeat(self) -> None:
        """Renew this worker's leases and learn which of its tasks were cancelled."""
        try:
            self._cancel_requested = self.queue.heartbeat(self.worker_id, self.lease_seconds)
        except Exception:
            log.exception("heartbeat failed")

    # -- one task -------------------------------------------------------------------------

    def execute(self, task: Task) -> None:
        attempt = task.attempts
        log.info("task %s attempt %d: %s started", task.id, attempt, task.model)
        started = time.monotonic()
        if self._guard_blocks(task):
            self._finish(
                task,
                TaskStatus.FAILED,
                error_code=FailureCode.DATA_INSPECTION,
                error_message=FailureCode.DATA_INSPECTION.message,
            )
            return
        try:
            spec = self.catalog.get(task.model)
            engine = self.engines.for_model(spec)
            on_step = self._on_step(task, engine)
            images = engine.generate(self._batch(task, spec), on_step)
            if not engine.capabilities.cancel:
                self._check_stop(task)  # the call could not be stopped: drop its images now
            generated = time.monotonic()
            results = [self._store(task, spec, i, image) for i, image in enumerate(images)]
        except _ShuttingDown:
            self.queue.release(task.id, self.worker_id, attempt)
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
                error_code=FailureCode.ALGO,
                error_message=FailureCode.ALGO.message,
            )
            return
        if not any(r.blob_key for r in results):
            self._finish(
                task,
                TaskStatus.FAILED,
                error_code=FailureCode.DATA_INSPECTION,
                error_message=FailureCode.DATA_INSPECTION.message,
            )
            return
        if self._finish(task, TaskStatus.SUCCEEDED, results=results):
            log.info(
                "task %s succeeded in %.2fs (engine %.2fs)",
                task.id,
                time.monotonic() - started,
                generated - started,
            )

    def _guard_blocks(self, task: Task) -> bool:
        """Whether the guard blocks the task's prompt: the user's, and the rewrite the
        pipeline would get when prompt_extend changed it. Before any engine is touched."""
        if self.guard is None:
            return False
        prompts = dict.fromkeys([task.params.prompt, task.effective_prompt])
        for text in prompts:
            if not text:
                continue
            verdict, blocked = self.guard.check(text)
            audit.guard_checked(
                verdict, blocked=blocked, guard=self.guard.model.name, task_id=task.id
            )
            if blocked:
                return True
        return False

    def _store(self, task: Task, spec: ModelSpec, index: int, image: Image.Image) -> ImageResult:
        """Check, label and store image `index`; its result slot."""
        withheld = self._inspect(task, index, image)
        if withheld is not None:
            return withheld  # never written: there is no file to serve
        key = result_key(task, index)
        label = image_label(self.labeler, image, task, spec, index)
        self.blobs.put(key, self.labeler.encode(image, label))
        return ImageResult(blob_key=key, actual_prompt=task.effective_prompt)

    def _inspect(self, task: Task, index: int, image: Image.Image) -> ImageResult | None:
        """The slot that replaces an image the classifier flags (or cannot check), else None."""
        if not self.classifier.enabled:
            return None
        try:
            verdict = self.classifier.score(image)
        except Exception:
            # Fail closed: an image nobody could check is not served.
            log.exception("task %s image %d: safety check failed; withholding it", task.id, index)
            verdict = Verdict(flagged=True, score=float("nan"), label="check-failed")
        audit.image_checked(
            verdict,
            task_id=task.id,
            index=index,
            classifier=self.classifier.name,
            threshold=self.classifier.threshold,
        )
        if not verdict.flagged:
            return None
        return ImageResult(
            code=FailureCode.DATA_INSPECTION, message=FailureCode.DATA_INSPECTION.message
        )

    def _finish(
        self,
        task: Task,
        status: TaskStatus,
        results: Sequence[ImageResult] = (),
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        done = self.queue.finish(
            task.id, self.worker_id, task.attempts, status, results, error_code, error_message
        )
        if not done:
            # The lease ran out and the task went to another attempt: ours is void.
            log.warning("task %s attempt %d lost its lease; discarding", task.id, task.attempts)
            self.blobs.delete_prefix(f"{task.id}/{task.attempts}")
            return False
        # Ours is the attempt that counts. Earlier ones (a worker that died, or one that
        # stalled past its lease and may still be writing) left files no result points at:
        # delete them now rather than at retention. `<task>/input/` is the task's own.
        for earlier in range(1, task.attempts):
            self.blobs.delete_prefix(f"{task.id}/{earlier}")
        return True

    def _batch(self, task: Task, spec: ModelSpec) -> GenerationBatch:
        p = task.params
        prompt, negative_prompt = task.effective_prompt, p.negative_prompt
        style = spec.style_table.get(p.style) if p.style else None
        if style is not None:
            prompt, negative_prompt = style.apply(prompt, negative_prompt)
        init_image, strength = None, 1.0
        style_image, style_scale = None, 0.0
        if p.ref_image_key is not None and p.ref_strength is not None:
            data = self.blobs.read(p.ref_image_key)
            if p.ref_mode == "refonly" and spec.ip_adapter is not None:
                style_image, style_scale = reference_style(data, p.ref_strength)
            else:
                init_image, strength = reference_start(
                    data, p.width, p.height, p.ref_mode, p.ref_strength
                )
        return GenerationBatch(
            init_image=init_image,
            strength=strength,
            style_image=style_image,
            style_scale=style_scale,
            lora=style.name if style is not None and style.lora is not None else None,
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=p.width,
            height=p.height,
            seeds=p.seeds,
            steps=p.steps,
            guidance=p.guidance,
        )

    def _check_stop(self, task: Task) -> None:
        if self._stop.is_set():
            raise _ShuttingDown()
        if task.id in self._cancel_requested:
            raise _Cancelled()

    def _on_step(self, task: Task, engine: Engine) -> StepCallback:
        last_write = 0.0
        report = engine.capabilities.progress

        def on_step(step: int, total: int) -> None:
            nonlocal last_write
            self._check_stop(task)
            now = time.monotonic()
            if report and now - last_write >= PROGRESS_INTERVAL_SECONDS and step < total:
                last_write = now
                self.queue.set_progress(task.id, self.worker_id, task.attempts, step)

        return on_step
