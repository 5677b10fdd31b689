"""Partial and total failure, as the SDK sees them. The test plays the worker through the store's
worker protocol (claim, files, fenced finish) on the service's own database, so it can decide
which image slots fail; the service (in-process, on a real port for the SDK) has no worker."""

from __future__ import annotations

from dashscope import ImageSynthesis
from PIL import Image

from imagesynth.db import SqlStores
from imagesynth.domain import TaskStatus
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.png import encode_png
from imagesynth.tasks.models import ImageResult
from tests.integration.images import fetch_png
from tests.integration.inprocess import InProcessService

TIMEOUT = {"code": "InternalError.Timeout", "message": "The image timed out."}


def play_worker(server: InProcessService, fail: set[int]) -> str:
    """Submit n=3 through the SDK, then run it as a worker whose slots in `fail` fail."""
    rsp = ImageSynthesis.async_call(
        model="wanx2.1-t2i-plus", prompt="three", n=3, size="512*512", api_key=server.key
    )
    store = SqlStores.open(f"sqlite:///{server.path / 'imagesynth.db'}")
    blobs = LocalBlobStore(server.path / "files")
    task = store.queue.claim("test-worker", ["wanx2.1-t2i-plus"], 30)
    assert task is not None and task.id == rsp.output.task_id
    results = []
    for i in range(3):
        if i in fail:
            results.append(ImageResult(**TIMEOUT))
            continue
        key = f"{task.id}/{task.attempts}/{i}.png"
        blobs.put(key, encode_png(Image.new("RGB", (512, 512), (i * 80, 0, 0))))
        results.append(ImageResult(blob_key=key, actual_prompt="three"))
    status = TaskStatus.SUCCEEDED if len(fail) < 3 else TaskStatus.FAILED
    error = (
        (None, None) if status == TaskStatus.SUCCEEDED else (TIMEOUT["code"], "All images failed.")
    )
    assert store.queue.finish(task.id, "test-worker", task.attempts, status, results, *error)
    store.close()
    return str(task.id)


def test_some_images_fail(idle_sdk: InProcessService) -> None:
    task_id = play_worker(idle_sdk, fail={1})
    rsp = ImageSynthesis.wait(task_id, api_key=idle_sdk.key)
    assert rsp.status_code == 200
    assert rsp.output.task_status == "SUCCEEDED"
    first, failed, last = rsp.output.results
    assert fetch_png(first.url).getpixel((0, 0)) == (0, 0, 0)
    assert fetch_png(last.url).getpixel((0, 0)) == (160, 0, 0)
    assert dict(failed) == {"url": "", **TIMEOUT} or dict(failed) == TIMEOUT
    assert rsp.output.task_metrics == {"TOTAL": 3, "SUCCEEDED": 2, "FAILED": 1}
    assert rsp.usage.image_count == 2


def test_all_images_fail(idle_sdk: InProcessService) -> None:
    task_id = play_worker(idle_sdk, fail={0, 1, 2})
    rsp = ImageSynthesis.wait(task_id, api_key=idle_sdk.key)
    assert rsp.status_code == 200 and rsp.code is None
    assert rsp.output.task_status == "FAILED"
    assert (rsp.output.code, rsp.output.message) == (TIMEOUT["code"], "All images failed.")
    assert rsp.output.task_metrics == {"TOTAL": 3, "SUCCEEDED": 0, "FAILED": 3}
    assert rsp.usage.image_count == 0
