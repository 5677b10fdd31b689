"""The worker: claim tasks, run them on their engine, check, label and store the images,
finish (fenced).

One worker runs one engine call at a time, on its generation thread; the images of a call are
post-processed on a bounded pool (worker/postprocess.py) while the engine already runs the
next one. Compatible tasks of a model may share one call (a batch, up to the catalog's
`max_batch` images). A heartbeat thread keeps every lease alive, including those of tasks in
post-processing, and learns of cancellations; the step callback checks them. An idle worker
sleeps until an event says a task may be claimable (tasks/events.py), polling only as the
fallback. A worker killed outright simply stops heartbeating: its lease runs out and the
maintenance pass hands its tasks, generated or not, to another worker (docs/task-queue.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from imagesynth.catalog import Catalog, ModelSpec
from imagesynth.domain import TaskStatus
from imagesynth.engine.base import (
    Engine,
    EngineFailure,
    GenerationBatch,
    PreviewCallback,
    StepCallback,
)
from imagesynth.errors import FailureCode
from imagesynth.labels import visible
from imagesynth.labels.aigc import ImageLabel
from imagesynth.labels.labeler import Labeler
from imagesynth.safety import audit
from imagesynth.safety.guard import Guard
from imagesynth.safety.images import ImageClassifier, NoImageClassifier, Verdict
from imagesynth.storage.blobs import BlobStore
from imagesynth.storage.png import EXTENSIONS, encode_image
from imagesynth.tasks.metrics import Metrics
from imagesynth.tasks.models import ImageResult, Task
from imagesynth.tasks.ports import TaskEvents, TaskQueue, WorkerPresence
from imagesynth.worker.engines import Engines, fit_for
from imagesynth.worker.postprocess import Generated, PostProcessing, Steps, process_inline
from imagesynth.worker.references import reference_start, reference_style

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25
PREVIEW_QUALITY = 85


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


def encode_preview(image: Image.Image) -> bytes:
    """A preview as the small JPEG that is stored (a latent-resolution picture: a few kB)."""
    return encode_image(image, "jpeg", PREVIEW_QUALITY)


def _on_accelerator(device: str) -> bool:
    """Whether a model's device is a GPU (offload needs one to offload onto)."""
    from imagesynth.engine.diffusers.pipelines import resolve_device

    return resolve_device(device) != "cpu"


def result_key(task: Task, index: int) -> str:
    """Where image `index` of this attempt is stored. The file name holds the task id, so
    clients that save each result under its URL's file name (DashScope's own samples do) keep
    every task's images apart."""
    ext = EXTENSIONS[task.params.output_format]
    return f"{task.id}/{task.attempts}/{task.id}-{index}.{ext}"


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
        events: TaskEvents | None = None,
        postprocess_threads: int = 2,
        postprocess_queue: int = 2,
        presence: WorkerPresence | None = None,
        metrics: Metrics | None = None,
        memory_budget: int | None = None,
    ) -> None:
        """guard: a local guard model asked about each task's prompt before generation (a
        remote one screens at submit instead). events: wake-ups when tasks may be claimable
        (without: polling every `poll_seconds`). postprocess_threads: post-processing jobs at
        once; postprocess_queue: tasks whose images may wait for post-processing (the memory
        bound). presence: where the heartbeat says this worker is alive (/ready reads it);
        metrics: the process's registry (by default one of its own). memory_budget: bytes of
        GPU memory to hold each model's weights against, instead of what the device has free
        (weights/fit.py)."""
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
        self.events = events
        self.postprocess_threads = postprocess_threads
        self.postprocess_queue = postprocess_queue
        self.presence = presence
        self.metrics = metrics or Metrics()
        self.memory_budget = memory_budget
        self.metrics.count_pipelines(self.engines.loaded_count)
        self.calls = 0  # engine calls made (a batch of tasks is one)
        self._cancel_requested: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._steps = Steps(
            classify=self._inspect, encode=self._encode, store=self._put, conclude=self._conclude
        )

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
        if demo:
            from imagesynth.engine.diffusers.demo import build_demo_weights

            log.warning(
                "models %s use DEMO weights: tiny random-weight pipelines whose images are "
                "noise. `imagesynth models pull MODEL` fetches real ones (see README).",
                ", ".join(demo),
            )
            build_demo_weights(self.demo_root)
        self.check_fits()

    def check_fits(self) -> list[str]:
        """Hold each served model's weights against the GPU memory (weights/fit.py), rather
        than meet an out-of-memory error in its first task: a model that fits only with
        offload = "model" gets it, for this worker; one that cannot fit is not served (its
        tasks stay PENDING for a worker with a larger GPU). The refused models."""
        refused = []
        offloaded: dict[str, ModelSpec] = {}
        for name in self.models:
            spec = self.catalog.get(name)
            fit = fit_for(spec, self.demo_root, self.memory_budget)
            if not fit.servable:
                log.error("model %s: %s; this worker does not serve it", name, fit.describe())
                refused.append(name)
            elif fit.verdict == "offload" and _on_accelerator(spec.device):
                offloaded[name] = dataclasses.replace(spec, offload="model")
                log.warning(
                    'model %s: %s; applied (write offload = "model" in its catalog entry to '
                    "make it explicit)",
                    name,
                    fit.describe(),
                )
            elif fit.verdict == "offload":
                log.info("model %s: %s; not applied: it runs on the CPU", name, fit.describe())
            else:
                log.info("model %s: %s", name, fit.describe())
        self.models = [m for m in self.models if m not in refused]
        if offloaded:
            self.catalog = Catalog(
                {**self.catalog.models, **offloaded},
                self.catalog.source,
                self.catalog.styles,
                self.catalog.billing,
            )
        return refused

    # -- loop -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Work until stop() (or `stop` is set). Tasks not finished by then are handed back."""
        if stop is not None:

            def relay() -> None:
                stop.wait()
                self.stop()

            threading.Thread(target=relay, name="stop-relay", daemon=True).start()
        self.prepare()
        if not self.models:
            log.error("worker %s: no model it was given fits this device; stopping", self.worker_id)
            return
        self._announce()  # ready as soon as the models are servable, not a beat later
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        unsubscribe = self._subscribe()
        pool = PostProcessing(self._steps, self.postprocess_threads, self.postprocess_queue)
        log.info("worker %s serving %s", self.worker_id, ", ".join(self.models))
        try:
            while pool.wait_for_room(self._stop):
                # Cleared before the claim: an event during it is not lost.
                self._wake.clear()
                tasks = self._claim()
                if not tasks:
                    self._wake.wait(self.poll_seconds)
                    continue
                for generated in self._generate(tasks):
                    pool.submit(generated)
        finally:
            unsubscribe()
            pool.shutdown()  # every task inside concludes: finished, or handed back
            self._leave()

    def _subscribe(self) -> Callable[[], None]:
        if self.events is None:
            return lambda: None
        served = set(self.models)

        def on_claimable(model: str) -> None:
            if model in served:
                self._wake.set()

        return self.events.on_claimable(on_claimable)

    def run_once(self) -> bool:
        """Claim and run one call's tasks to their end on this thread; False when there was
        none (or the claim failed)."""
        tasks = self._claim()
        if not tasks:
            return False
        for generated in self._generate(tasks):
            process_inline(generated, self._steps)
        return True

    def execute(self, task: Task) -> None:
        """Run one claimed task to its end on this thread."""
        for generated in self._generate([task]):
            process_inline(generated, self._steps)

    def _claim(self) -> list[Task]:
        """The next task, and the compatible tasks that may share its engine call."""
        try:
            first = self.queue.claim(self.worker_id, self.models, self.lease_seconds)
            if first is None:
                return []
            tasks = [first]
            key = first.params.batch_key
            room = self.catalog.get(first.model).max_batch - first.params.n
            while key is not None and room > 0:
                more = self.queue.claim(
                    self.worker_id, [first.model], self.lease_seconds, batch_key=key, max_n=room
                )
                if more is None:
                    break
                tasks.append(more)
                room -= more.params.n
            return tasks
        except Exception:
            log.exception("claim failed; retrying")
            self._stop.wait(1.0)
            return []

    def _heartbeat_loop(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while not self._stop.wait(interval):
            self.heartbeat()

    def heartbeat(self) -> None:
        """Renew this worker's leases, learn which of its tasks were cancelled, and say that
        it is alive."""
        try:
            self._cancel_requested = self.queue.heartbeat(self.worker_id, self.lease_seconds)
        except Exception:
            log.exception("heartbeat failed")
        self._announce()

    def _announce(self) -> None:
        # Not once stopping: a late beat would bring back the row that run() removes.
        if self.presence is None or self._stop.is_set():
            return
        try:
            self.presence.beat(self.worker_id, self.models)
        except Exception:
            log.exception("presence heartbeat failed")

    def _leave(self) -> None:
        if self.presence is None:
            return
        try:
            self.presence.leave(self.worker_id)
        except Exception:
            # The row ages out of the readiness window instead.
            log.exception("could not remove this worker from the workers table")

    # -- generation -----------------------------------------------------------------------

    def _generate(self, tasks: list[Task]) -> list[Generated]:
        """One engine call for `tasks` (compatible: one model, size, steps, guidance and
        style); each task's images, or nothing for a task that ended here."""
        started = time.monotonic()
        live = []
        for task in tasks:
            log.info("task %s attempt %d: %s started", task.id, task.attempts, task.model)
            if task.queue_wait is not None:
                self.metrics.queue_wait.labels(model=task.model).observe(task.queue_wait)
            if self._guard_blocks(task):
                self._fail(task, FailureCode.DATA_INSPECTION)
            else:
                live.append(task)
        if not live:
            return []
        try:
            spec = self.catalog.get(live[0].model)
            engine = self.engines.for_model(spec)
            on_step = self._on_step(live, engine)
            batch = self._batch_of(live, spec)
            self.calls += 1
            if batch.preview_steps and engine.capabilities.previews:
                images = engine.generate(batch, on_step, self._on_preview(live))
            else:
                images = engine.generate(batch, on_step)
            if not engine.capabilities.cancel:
                self._check_stop(live)  # the call could not be stopped: drop its images now
        except _ShuttingDown:
            for task in live:
                self.queue.release(task.id, self.worker_id, task.attempts)
                log.info("task %s handed back on shutdown", task.id)
            return []
        except _Cancelled:
            for task in live:
                self._finish(task, TaskStatus.CANCELED)
            return []
        except EngineFailure as exc:
            log.warning("tasks %s failed: %s", ", ".join(t.id for t in live), exc)
            for task in live:
                self._finish(
                    task,
                    TaskStatus.FAILED,
                    error_code=exc.code,
                    error_message=f"{exc.code.message} {exc.detail}",
                )
            return []
        except Exception:
            log.exception("tasks %s failed", ", ".join(t.id for t in live))
            for task in live:
                self._fail(task)
            return []
        generated, done = [], time.monotonic()
        if len(live) > 1:
            log.info("one engine call served %d tasks", len(live))
        for task in live:
            mine, images = images[: task.params.n], images[task.params.n :]
            if task.id in self._cancel_requested:
                self._finish(task, TaskStatus.CANCELED)
                continue
            if engine.capabilities.progress:
                # Every step done: what a client sees while the images are post-processed.
                self.queue.set_progress(task.id, self.worker_id, task.attempts, task.params.steps)
            generated.append(Generated(task, spec, mine, started, done))
        return generated

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

    # -- post-processing (worker/postprocess.py runs these) ---------------------------------

    def _inspect(self, job: Generated, index: int) -> ImageResult | None:
        """The slot that replaces an image the classifier flags (or cannot check), else None."""
        if not self.classifier.enabled:
            return None
        task = job.task
        try:
            verdict = self.classifier.score(job.images[index])
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

    def _encode(self, job: Generated, index: int) -> bytes:
        image = job.images[index]
        label = image_label(self.labeler, image, job.task, job.spec, index)
        params = job.task.params
        return self.labeler.encode(image, label, params.output_format, params.output_compression)

    def _put(self, job: Generated, index: int, data: bytes) -> ImageResult:
        self._check_stop([job.task])  # a stopping worker stores nothing more
        key = result_key(job.task, index)
        self.blobs.put(key, data)
        return ImageResult(blob_key=key, actual_prompt=job.task.effective_prompt)

    def _conclude(self, job: Generated) -> None:
        """Finish a post-processed task: succeeded, or handed back, cancelled or failed with
        whatever it stored deleted."""
        task, error = job.task, job.error
        if error is None and task.id in self._cancel_requested:
            error = _Cancelled()
        if error is None and self._stop.is_set():
            error = _ShuttingDown()
        if error is not None:
            self.blobs.delete_prefix(f"{task.id}/{task.attempts}")
            if isinstance(error, _ShuttingDown):
                self.queue.release(task.id, self.worker_id, task.attempts)
                log.info("task %s handed back on shutdown", task.id)
            elif isinstance(error, _Cancelled):
                self._finish(task, TaskStatus.CANCELED)
            else:
                log.error("task %s failed in post-processing", task.id, exc_info=error)
                self._fail(task)
            return
        results = [r or ImageResult() for r in job.results]
        if not any(r.blob_key for r in results):
            self._fail(task, FailureCode.DATA_INSPECTION)  # the classifier withheld every one
            return
        if self._finish(task, TaskStatus.SUCCEEDED, results=results):
            now = time.monotonic()
            self._observe(job, now)
            log.info(
                "task %s succeeded in %.2fs (engine %.2fs, post-processing %.2fs)",
                task.id,
                now - job.started,
                job.generated - job.started,
                now - job.generated,
            )

    def _observe(self, job: Generated, now: float) -> None:
        """A succeeded task's durations (monotonic on this worker; its wait in the queue from
        the database's clock)."""
        model, m = job.task.model, self.metrics
        waited = job.task.queue_wait or 0.0
        m.generation.labels(model=model).observe(job.generated - job.started)
        m.postprocess.labels(model=model).observe(now - job.generated)
        m.end_to_end.labels(model=model).observe(waited + now - job.started)

    def _fail(self, task: Task, code: FailureCode = FailureCode.ALGO) -> None:
        self._finish(task, TaskStatus.FAILED, error_code=code, error_message=code.message)

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
        self.metrics.finished.labels(model=task.model, status=str(status)).inc()
        # Ours is the attempt that counts. Earlier ones (a worker that died, or one that
        # stalled past its lease and may still be writing) left files no result points at:
        # delete them now rather than at retention. `<task>/input/` is the task's own.
        for earlier in range(1, task.attempts):
            self.blobs.delete_prefix(f"{task.id}/{earlier}")
        return True

    # -- the engine call ------------------------------------------------------------------

    def _batch_of(self, tasks: list[Task], spec: ModelSpec) -> GenerationBatch:
        """One call for every task's images, in task order."""
        first = self._batch(tasks[0], spec)
        if len(tasks) == 1:
            return first
        parts = [first, *(self._batch(t, spec) for t in tasks[1:])]
        return dataclasses.replace(
            first,
            preview_steps=tuple(sorted({s for part in parts for s in part.preview_steps})),
            seeds=tuple(seed for part in parts for seed in part.seeds),
            prompts=tuple(part.prompt for part in parts for _ in part.seeds),
            negative_prompts=tuple(part.negative_prompt for part in parts for _ in part.seeds),
        )

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
            preview_steps=p.preview_steps,
        )

    def _check_stop(self, tasks: list[Task]) -> None:
        """Raise when the call should stop: the worker is stopping, or every one of its
        tasks was cancelled (a batch runs on for the tasks still wanted)."""
        if self._stop.is_set():
            raise _ShuttingDown()
        if all(task.id in self._cancel_requested for task in tasks):
            raise _Cancelled()

    def _on_preview(self, tasks: list[Task]) -> PreviewCallback:
        """Store each task's preview of its first image at the steps it asked for, as
        `<task>/<attempt>/preview-<j>.jpg` (j from 0), and count it on the task: the API's
        streams read them from there, in whichever process they run."""

        def on_preview(step: int, previews: list[Image.Image]) -> None:
            self._check_stop(tasks)
            first = 0
            for task in tasks:
                planned = task.params.preview_steps
                if step in planned and task.id not in self._cancel_requested:
                    j = planned.index(step)
                    self.blobs.put(task.preview_key(j), encode_preview(previews[first]))
                    self.queue.set_progress(
                        task.id, self.worker_id, task.attempts, step, previews=j + 1
                    )
                first += task.params.n

        return on_preview

    def _on_step(self, tasks: list[Task], engine: Engine) -> StepCallback:
        last_write = 0.0
        report = engine.capabilities.progress

        def on_step(step: int, total: int) -> None:
            nonlocal last_write
            self._check_stop(tasks)
            now = time.monotonic()
            if report and now - last_write >= PROGRESS_INTERVAL_SECONDS and step < total:
                last_write = now
                for task in tasks:
                    self.queue.set_progress(task.id, self.worker_id, task.attempts, step)

        return on_step
