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
