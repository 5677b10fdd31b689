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
from imagesynth.errors import DataInspectionFailed
from imagesynth.inputs.reference import cover, style_only
from imagesynth.labels.labeler import Labeler
from imagesynth.safety import audit
from imagesynth.safety.images import ImageClassifier, NoImageClassifier, Verdict
from imagesynth.storage.local import LocalBlobStore
from imagesynth.tasks.models import ImageResult, Task, TaskStatus
from imagesynth.tasks.store_sql import SqlStore

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25
# Loading a pipeline is not thread-safe (diffusers' lazy imports; accelerate's init_empty_weights
# patches torch.nn.Module for the whole process): one load at a time in a process, however many
# workers it runs.
_LOADING = threading.Lock()
DATA_INSPECTION_FAILED = "DataInspectionFailed"


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


def reference_style(path: Path | None, ref_strength: float) -> tuple[Image.Image, float]:
    """The image prompt for a wanx-v1 refonly reference where the model has an IP-Adapter, and
    the adapter's scale: 0.2 at ref_strength 0 (a hint of its look) up to 1.0 at ref_strength 1
    (as strongly as the adapter was trained to follow it). The image is generated from noise
    at the requested size, so the reference's layout does not carry over as it does in a
    repaint; the adapter's image encoder crops and scales the reference itself."""
    if path is None:
        raise FileNotFoundError("the task's reference image is gone")
    with Image.open(path) as stored:
        image = stored.convert("RGB")
    return image, 0.2 + 0.8 * ref_strength


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
        labeler: Labeler | None = None,
        classifier: ImageClassifier | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.demo_root = demo_root
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.models = list(models) if models else list(catalog.models)
        self.worker_id = worker_id or new_worker_id()
        self.labeler = labeler or Labeler()
        self.classifier: ImageClassifier = classifier or NoImageClassifier()
        self._adapters: dict[EngineSpec, Adapter] = {}
        self._cancel_requested: set[str] = set()
        self._stop = threading.Event()

    # -- setup ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load the image classifier; build demo weights if a served model needs them
        (offline, once per home)."""
        log.info(self.classifier.describe())
        self.classifier.load()
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
            with _LOADING:
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
                withheld = self._inspect(task, i, image)
                if withheld is not None:
                    results.append(withheld)  # never written: there is no file to serve
                    continue
                key = f"{task.id}/{attempt}/{i}.png"
                self.blobs.put(key, self.labeler.encode(image, task, spec, i))
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
        if not any(r.blob_key for r in results):
            self._finish(
                task,
                TaskStatus.FAILED,
                error_code=DATA_INSPECTION_FAILED,
                error_message=DataInspectionFailed().message,
            )
            return
        if self._finish(task, TaskStatus.SUCCEEDED, results=results):
            log.info(
                "task %s succeeded in %.2fs (pipeline %.2fs)",
                task.id,
                time.monotonic() - started,
                generated - started,
            )

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
        return ImageResult(code=DATA_INSPECTION_FAILED, message=DataInspectionFailed().message)

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
        style_image, style_scale = None, 0.0
        if p.ref_image_key is not None and p.ref_strength is not None:
            path = self.blobs.path(p.ref_image_key)
            if p.ref_mode == "refonly" and spec.ip_adapter is not None:
                style_image, style_scale = reference_style(path, p.ref_strength)
            else:
                init_image, strength = reference_start(
                    path, p.width, p.height, p.ref_mode, p.ref_strength
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
