"""The worker against the in-memory queue (tasks/memory_queue.py, held to the same contract as
the SQL queue) and tiny real pipelines: what it stores, how it ends a task, and how it behaves
when cancelled, stopped, fenced out or failed."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagesynth.catalog import Catalog
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.engine.base import Capabilities, Engine, GenerationBatch, StepCallback
from imagesynth.errors import FailureCode
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.signing import UrlSigner
from imagesynth.tasks.memory_queue import InMemoryTaskQueue
from imagesynth.tasks.models import Task
from imagesynth.worker.engines import engine_spec
from imagesynth.worker.worker import Worker

MODEL = "wan2.2-t2i-flash"
CATALOG = Catalog.load()


@dataclasses.dataclass
class Rig:
    queue: InMemoryTaskQueue
    blobs: LocalBlobStore
    worker: Worker

    def add(self, model: str = MODEL, **fields: Any) -> Task:
        params: GenerationParams = CATALOG.get(model).validate(
            **{"prompt": "a lighthouse", "size": "512*512", "n": 2, "seed": 11, **fields}
        )
        return self.queue.add("key-a", model, params)

    def claim(self, lease: float = 30.0) -> Task:
        task = self.queue.claim(self.worker.worker_id, self.worker.models, lease)
        assert task is not None
        return task

    def get(self, task_id: str) -> Task:
        task = self.queue.get_task(task_id)
        assert task is not None
        return task

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.blobs.root)) for p in self.blobs.root.rglob("*.png"))


@pytest.fixture
def rig(tmp_path: Path, demo_root: Path) -> Rig:
    queue = InMemoryTaskQueue()
    blobs = LocalBlobStore(tmp_path / "blobs", UrlSigner(b"k" * 32, 60))
    worker = Worker(
        queue,
        blobs,
        CATALOG,
        demo_root,
        lease_seconds=30,
        poll_seconds=0.01,
        models=[MODEL, "wanx-v1"],
    )
    return Rig(queue, blobs, worker)


def test_nothing_to_do_is_no_work(rig: Rig) -> None:
    assert rig.worker.run_once() is False


def test_a_task_ends_with_its_images_stored_at_the_requested_size(rig: Rig) -> None:
    task = rig.add(size="768*512")
    assert rig.worker.run_once() is True
    done = rig.get(task.id)
    assert done.status is TaskStatus.SUCCEEDED, done
    assert [r.blob_key for r in done.results] == [
        f"{task.id}/1/{task.id}-0.png",
        f"{task.id}/1/{task.id}-1.png",
    ]
    for i, result in enumerate(done.results):
        assert result.actual_prompt == "a lighthouse"
        assert result.blob_key is not None
        data = rig.blobs.read(result.blob_key)
        assert data is not None
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (768, 512)
            meta = json.loads(image.text["imagesynth"])
        assert (meta["task_id"], meta["image_index"], meta["seed"]) == (task.id, i, 11 + i)


def test_a_cancelled_task_stops_at_its_next_step_and_stores_nothing(rig: Rig) -> None:
    rig.add()
    task = rig.claim()
    rig.queue.request_cancel(task.id)
    rig.worker.heartbeat()  # learns of the cancellation, as its heartbeat thread would
    rig.worker.execute(task)
    assert rig.get(task.id).status is TaskStatus.CANCELED
    assert rig.files() == []


def test_a_stopping_worker_hands_its_task_back(rig: Rig) -> None:
    rig.add()
    task = rig.claim()
    rig.worker.stop()
    rig.worker.execute(task)
    back = rig.get(task.id)
    assert (back.status, back.attempts, back.worker_id) == (TaskStatus.PENDING, 0, None)
    assert rig.files() == []


def test_a_worker_that_lost_its_lease_discards_its_images(rig: Rig) -> None:
    rig.add()
    stale = rig.claim(lease=-1.0)  # expired at once
    rig.queue.reap_expired_leases()
    rerun = rig.queue.claim("another-worker", [MODEL], 30.0)
    assert rerun is not None and rerun.attempts == 2
    rig.worker.execute(stale)
    now = rig.get(stale.id)
    assert (now.status, now.worker_id) == (TaskStatus.RUNNING, "another-worker")
    assert rig.files() == []  # the stale attempt's files are gone


def test_a_task_whose_engine_fails_ends_failed_with_the_algo_code(rig: Rig) -> None:
    task = rig.add("wanx-v1", size="1024*1024", n=1, steps=1, has_reference=True)
    # The stored reference image this task names is not there: the engine cannot start.
    rig.queue._tasks[task.id] = dataclasses.replace(
        task, params=dataclasses.replace(task.params, ref_image_key=f"{task.id}/input/ref.png")
    )
    assert rig.worker.run_once()
    failed = rig.get(task.id)
    assert (failed.status, failed.error_code) == (TaskStatus.FAILED, FailureCode.ALGO)
    assert failed.error_message == FailureCode.ALGO.message


class UninterruptibleEngine:
    """A real engine seen through a backend that can neither report steps nor stop a call
    (a remote server, say): the worker must still honour a cancellation, after the call."""

    capabilities = Capabilities(progress=False, cancel=False)

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.calls = 0

    def load(self) -> None:
        self.inner.load()

    def generate(self, batch: GenerationBatch, on_step: StepCallback) -> list[Image.Image]:
        self.calls += 1
        return self.inner.generate(batch, lambda step, total: None)


def test_an_engine_that_cannot_stop_still_ends_a_cancelled_task_cancelled(rig: Rig) -> None:
    spec = CATALOG.get(MODEL)
    wanted = engine_spec(spec, rig.worker.demo_root)
    engine = UninterruptibleEngine(rig.worker.engines.for_model(spec))
    rig.worker.engines.install(wanted, engine)
    rig.add()
    task = rig.claim()
    rig.queue.request_cancel(task.id)
    rig.worker.heartbeat()
    rig.worker.execute(task)
    assert engine.calls == 1  # the call ran to its end ...
    assert rig.get(task.id).status is TaskStatus.CANCELED  # ... and its images were dropped
    assert rig.files() == []


def test_a_rerun_that_finishes_deletes_the_files_of_earlier_attempts(rig: Rig) -> None:
    task_id = "7d0c3f7e-0000-4000-8000-000000000001"
    reference = io.BytesIO()
    Image.new("RGB", (300, 300), "red").save(reference, format="PNG")
    rig.blobs.put(f"{task_id}/input/ref.png", reference.getvalue())
    params = CATALOG.get("wanx-v1").validate(
        prompt="a still life", size="720*1280", n=1, ref_mode="repaint", ref_strength=0.5
    )
    params = dataclasses.replace(params, ref_image_key=f"{task_id}/input/ref.png")
    rig.queue.add("key-a", "wanx-v1", params, task_id=task_id)
    # Attempt 1's worker wrote an image and died; the reaper handed the task on.
    rig.claim(lease=-1.0)
    rig.blobs.put(f"{task_id}/1/0.png", b"written by a worker that then died")
    rig.queue.reap_expired_leases()
    assert rig.worker.run_once() is True
    done = rig.get(task_id)
    assert (done.status, done.attempts) == (TaskStatus.SUCCEEDED, 2)
    assert rig.files() == [f"{task_id}/2/{task_id}-0.png", f"{task_id}/input/ref.png"]


# -- batching -----------------------------------------------------------------------------


def batching_catalog(max_batch: int) -> Catalog:
    models = dict(CATALOG.models)
    models[MODEL] = dataclasses.replace(models[MODEL], max_batch=max_batch)
    return Catalog(models, "test", CATALOG.styles, CATALOG.billing)


def stored_pixels(rig: Rig, task_id: str) -> list[Any]:
    import numpy as np

    out = []
    for result in rig.get(task_id).results:
        assert result.blob_key is not None
        data = rig.blobs.read(result.blob_key)
        assert data is not None
        with Image.open(io.BytesIO(data)) as image:
            out.append(np.asarray(image.convert("RGB"), dtype=np.int16))
    return out


def test_four_compatible_tasks_run_as_one_pipeline_call_each_as_if_alone(
    tmp_path: Path, demo_root: Path
) -> None:
    queue = InMemoryTaskQueue()
    blobs = LocalBlobStore(tmp_path / "batched", UrlSigner(b"k" * 32, 60))
    worker = Worker(
        queue, blobs, batching_catalog(4), demo_root, lease_seconds=30, poll_seconds=0.01
    )
    batched = Rig(queue, blobs, worker)
    prompts = ["a lighthouse", "a koi pond", "a red bicycle", "mountains at dawn"]
    # Two keys' tasks, one key asking for two images: 1 + 1 + 2 = 4 images, the call's limit.
    tasks = [
        batched.queue.add(
            "key-a",
            MODEL,
            CATALOG.get(MODEL).validate(prompt=prompts[0], size="512*512", n=1, seed=3),
        ),
        batched.queue.add(
            "key-b",
            MODEL,
            CATALOG.get(MODEL).validate(
                prompt=prompts[1], size="512*512", n=2, seed=40, negative_prompt="fog"
            ),
        ),
        batched.queue.add(
            "key-a",
            MODEL,
            CATALOG.get(MODEL).validate(prompt=prompts[2], size="512*512", n=1, seed=7),
        ),
    ]
    other_size = batched.add(prompt=prompts[3], size="768*512", n=1, seed=9)
    one_more = batched.add(prompt=prompts[3], size="512*512", n=1, seed=9)  # over the limit

    assert batched.worker.run_once() is True
    assert batched.worker.calls == 1
    assert [batched.get(t.id).status for t in tasks] == [TaskStatus.SUCCEEDED] * 3
    assert batched.get(other_size.id).status is TaskStatus.PENDING  # never joins
    assert batched.get(one_more.id).status is TaskStatus.PENDING  # the call was full
    assert sum(len(batched.get(t.id).results) for t in tasks) == 4

    # Each image is the one its task would have got alone (seed + i, its own prompt).
    alone = Rig(
        InMemoryTaskQueue(),
        LocalBlobStore(tmp_path / "alone", UrlSigner(b"k" * 32, 60)),
        Worker(
            InMemoryTaskQueue(),
            blobs,
            CATALOG,
            demo_root,
            lease_seconds=30,
            poll_seconds=0.01,
        ),
    )
    alone.worker.queue = alone.queue
    alone.worker.blobs = alone.blobs
    for task in tasks:
        single = alone.queue.add(task.api_key_id, MODEL, task.params)
        assert alone.worker.run_once() is True
        for got, want in zip(
            stored_pixels(batched, task.id), stored_pixels(alone, single.id), strict=True
        ):
            assert abs(got - want).max() <= 1
    assert alone.worker.calls == 3


def test_tasks_with_a_reference_image_or_another_style_never_share_a_call() -> None:
    spec = CATALOG.get("wanx-v1")
    plain = spec.validate(prompt="a", size="1024*1024", n=1)
    assert plain.batch_key is not None
    styled = spec.validate(prompt="a", size="1024*1024", n=1, style="<anime>")
    assert styled.batch_key not in (None, plain.batch_key)
    referenced = spec.validate(
        prompt="a", size="1024*1024", n=1, ref_mode="repaint", ref_strength=0.5, has_reference=True
    )
    assert referenced.batch_key is None
    other_steps = spec.validate(prompt="a", size="1024*1024", n=1, steps=3)
    assert other_steps.batch_key != plain.batch_key


# -- the pipelined loop (Worker.run) --------------------------------------------------------


class GatedClassifier:
    """A real ImageClassifier protocol implementation that lets nothing through until the test
    opens its gate: post-processing that takes as long as the test needs."""

    name = "gated"
    threshold = 0.5
    enabled = True

    def __init__(self) -> None:
        import threading

        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def describe(self) -> str:
        return "gated test classifier"

    def load(self) -> None:
        pass

    def score(self, image: Image.Image) -> Any:
        from imagesynth.safety.images import Verdict

        self.entered.release()
        assert self.gate.wait(60)
        return Verdict(flagged=False, score=0.0, label="ok")


@dataclasses.dataclass
class Running:
    rig: Rig
    classifier: GatedClassifier
    thread: Any

    def wait(self, task_id: str, *statuses: TaskStatus, timeout: float = 60) -> Task:
        import time

        deadline = time.monotonic() + timeout
        while (task := self.rig.get(task_id)).status not in statuses:
            assert time.monotonic() < deadline, task
            time.sleep(0.01)
        return task


@pytest.fixture
def running(rig: Rig) -> Any:
    import threading

    classifier = GatedClassifier()
    rig.worker.classifier = classifier
    rig.worker.events = rig.queue.events
    rig.worker.postprocess_queue = 2
    thread = threading.Thread(target=rig.worker.run, daemon=True)
    thread.start()
    yield Running(rig, classifier, thread)
    classifier.gate.set()
    rig.worker.stop()
    thread.join(60)


def test_the_engine_runs_the_next_task_while_the_last_is_post_processed(
    running: Running,
) -> None:
    rig = running.rig
    first, second, third = (rig.add(n=1, seed=s) for s in (1, 2, 3))
    assert running.classifier.entered.acquire(timeout=60)  # first is in post-processing
    assert running.classifier.entered.acquire(timeout=60)  # ... and second, generated since
    assert rig.get(first.id).status is TaskStatus.RUNNING
    assert rig.get(first.id).progress_step == first.params.steps  # every step done
    # Two tasks fill post-processing (postprocess_queue = 2): the third waits, unclaimed.
    assert not running.classifier.entered.acquire(timeout=0.5)
    assert rig.get(third.id).status is TaskStatus.PENDING
    assert rig.worker.calls == 2
    running.classifier.gate.set()
    for task in (first, second, third):
        assert running.wait(task.id, TaskStatus.SUCCEEDED).status is TaskStatus.SUCCEEDED
    assert len(rig.files()) == 3


def test_a_task_cancelled_during_post_processing_ends_cancelled_with_no_files(
    running: Running,
) -> None:
    rig = running.rig
    task = rig.add()
    assert running.classifier.entered.acquire(timeout=60)
    rig.queue.request_cancel(task.id)
    rig.worker.heartbeat()
    running.classifier.gate.set()
    assert running.wait(task.id, TaskStatus.CANCELED).status is TaskStatus.CANCELED
    assert rig.files() == []


def test_shutdown_hands_back_the_tasks_in_post_processing(running: Running) -> None:
    rig = running.rig
    tasks = [rig.add(n=1, seed=s) for s in (1, 2)]
    assert running.classifier.entered.acquire(timeout=60)
    assert running.classifier.entered.acquire(timeout=60)
    rig.worker.stop()
    running.classifier.gate.set()
    running.thread.join(60)
    assert not running.thread.is_alive()
    for task in tasks:
        back = rig.get(task.id)
        assert (back.status, back.attempts, back.worker_id) == (TaskStatus.PENDING, 0, None)
    assert rig.files() == []


def test_an_idle_worker_wakes_at_the_submit_not_at_its_poll(rig: Rig) -> None:
    import threading
    import time

    rig.worker.poll_seconds = 30.0  # a poll would never come within the test
    rig.worker.events = rig.queue.events
    thread = threading.Thread(target=rig.worker.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # idle, asleep
        task = rig.add(n=1)
        deadline = time.monotonic() + 60
        while rig.get(task.id).status is not TaskStatus.SUCCEEDED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        rig.worker.stop()
        thread.join(60)
