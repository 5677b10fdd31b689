"""The service with its blobs in an S3 bucket (a real `weed mini`): the official SDK gets
result links it downloads, and retention deletes a task's objects with the task."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dashscope import ImageSynthesis

from imagesynth.storage.s3 import S3BlobStore
from imagesynth.tasks.maintenance import Maintenance
from tests.integration.conftest import BIN, clean_environment, sdk_pointed_at
from tests.integration.images import fetch_png
from tests.integration.inprocess import InProcessService
from tests.s3_server import S3Server


def _objects(blobs: S3BlobStore, task_id: str) -> list[str]:
    listing = blobs.client.list_objects_v2(Bucket=blobs.bucket, Prefix=f"svc/{task_id}/")
    return [obj["Key"] for obj in listing.get("Contents", [])]


@pytest.mark.parametrize("urls", ["presigned", "proxy"])
def test_results_in_s3_download_and_expire_with_their_task(
    s3_env: S3Server, start_service: Callable[..., InProcessService], urls: str
) -> None:
    bucket = s3_env.new_bucket()
    service = start_service(transport="http", storage_url=f"s3://{bucket}/svc", s3_urls=urls)
    with sdk_pointed_at(service):
        rsp = ImageSynthesis.call(
            api_key=service.key, model="wan2.2-t2i-flash", prompt="a lighthouse", size="768*512"
        )
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "SUCCEEDED", rsp
    url = rsp.output.results[0].url
    # Presigned: the bucket's own link, so the image never passes through the API; proxy:
    # the API's signed /files/ link, which the API serves from the bucket.
    expected = f"{s3_env.endpoint}/{bucket}/svc/" if urls == "presigned" else service.url
    assert url.startswith(expected), url
    assert fetch_png(url).size == (768, 512)

    blobs = service.runtime.blobs
    assert isinstance(blobs, S3BlobStore)
    task_id = rsp.output.task_id
    assert _objects(blobs, task_id)

    time.sleep(0.05)
    stores = service.runtime.stores
    Maintenance(stores.queue, stores.tasks, blobs, retention_seconds=0.01).run_once()
    assert _objects(blobs, task_id) == []
    assert stores.tasks.get_task(task_id) is None


def test_a_missing_bucket_stops_startup_with_one_line(s3_env: S3Server, tmp_path: Path) -> None:
    env = {
        **clean_environment(),
        **s3_env.env,
        "IMAGESYNTH_HOME": str(tmp_path),
        "IMAGESYNTH_STORAGE_URL": "s3://no-such-bucket/svc",
    }
    done = subprocess.run(
        [str(BIN), "keys", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: S3 bucket 'no-such-bucket' at {s3_env.endpoint} cannot be used: "
        "it does not exist (404 Not Found)"
    )
