"""`backend = "openai-images"` against a real server that speaks the OpenAI Images API: another
imagesynth's own front (its demo pipelines), reached over HTTP, through a TCP proxy the test can
cut to play a server that is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from imagesynth.config import Settings
from tests.integration.images import fetch_png
from tests.integration.inprocess import InProcessService
from tests.integration.tcp_proxy import TcpProxy, tcp_proxy

KEY_ENV = "IMAGESYNTH_TEST_REMOTE_KEY"


def remote_catalog(path: Path, endpoint: str, remote_model: str, retries: int = 0) -> Path:
    path.write_text(
        f"""
[models.remote-flash]
family = "wan"
backend = "openai-images"
endpoint = "{endpoint}"
remote_model = "{remote_model}"
api_key_env = "{KEY_ENV}"
remote_timeout = 60
remote_retries = {retries}
sync = true
steps = 2
min_side = 256
default_size = "512*512"
n_max = 4
"""
    )
    return path


@pytest.fixture
def upstream(http_server: InProcessService, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    """The real server, behind a proxy: its key in the environment variable the catalog names."""
    monkeypatch.setenv(KEY_ENV, http_server.key)
    parts = urlparse(http_server.url)
    with tcp_proxy((parts.hostname or "127.0.0.1", parts.port or 80)) as proxy:
        yield proxy


def front(
    start_service: Callable[..., InProcessService],
    tmp_path: Path,
    proxy: TcpProxy,
    remote_model: str = "wan2.2-t2i-flash",
    retries: int = 0,
) -> InProcessService:
    endpoint = f"http://127.0.0.1:{proxy.port}/v1"
    catalog = remote_catalog(tmp_path / "catalog.toml", endpoint, remote_model, retries)
    return start_service(transport="http", catalog=catalog)


def body(seed: int, n: int = 2) -> dict[str, Any]:
    return {
        "model": "remote-flash",
        "input": {"prompt": "a harbour at night"},
        "parameters": {"n": n, "seed": seed, "size": "512*512", "prompt_extend": False},
    }


def run(service: InProcessService, seed: int, n: int = 2) -> dict[str, Any]:
    reply = service.wait(service.submit(body(seed, n)), timeout=120)
    return dict(reply["output"])


def pixels(url: str) -> np.ndarray:
    return np.asarray(fetch_png(url), np.int16)


def test_same_seed_same_pixels_one_request_per_image(
    start_service: Callable[..., InProcessService], tmp_path: Path, upstream: TcpProxy
) -> None:
    service = front(start_service, tmp_path, upstream)
    one, two = run(service, seed=11), run(service, seed=11)
    assert one["task_status"] == two["task_status"] == "SUCCEEDED", one
    a = [pixels(r["url"]) for r in one["results"]]
    b = [pixels(r["url"]) for r in two["results"]]
    assert a[0].shape == (512, 512, 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.abs(a[0] - a[1]).mean() > 5  # image 1 is seed 12's, not seed 11's again
    (alone,) = [pixels(r["url"]) for r in run(service, seed=12, n=1)["results"]]
    assert np.array_equal(a[1], alone)


def test_a_refusing_server_fails_the_task_with_a_clear_code(
    start_service: Callable[..., InProcessService], tmp_path: Path, upstream: TcpProxy
) -> None:
    service = front(start_service, tmp_path, upstream, remote_model="no-such-model")
    output = run(service, seed=1, n=1)
    assert output["task_status"] == "FAILED"
    assert output["code"] == "InternalError.RemoteRejected"
    assert "404" in output["message"] and "no-such-model" in output["message"]


def test_server_down_fails_after_the_retries_and_up_again_the_task_waits(
    start_service: Callable[..., InProcessService], tmp_path: Path, upstream: TcpProxy
) -> None:
    service = front(start_service, tmp_path, upstream, retries=2)
    upstream.cut()
    started = time.monotonic()
    output = run(service, seed=3, n=1)
    assert output["task_status"] == "FAILED"
    assert output["code"] == "InternalError.RemoteUnavailable"
    assert "after 3 attempts" in output["message"]
    assert time.monotonic() - started >= 2.0  # backoff 1 s, then 2 s (with jitter)
    # Down when the task starts, back within its retries: the task waits, then succeeds.
    task_id = service.submit(body(3, n=1))
    threading.Timer(1.5, upstream.restore).start()
    output = service.wait(task_id, timeout=120)["output"]
    assert output["task_status"] == "SUCCEEDED", output
    with service.client() as c:
        listed = c.get("/api/v1/tasks").json()["total"]
    assert listed == 2  # both tasks ended and kept: none lost


def test_a_running_remote_task_says_it_reports_no_steps(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from imagesynth.api.schemas import task_output
    from imagesynth.catalog import Catalog
    from imagesynth.domain import TaskStatus
    from imagesynth.tasks.models import Task

    catalog = Catalog.load(remote_catalog(tmp_path / "c.toml", "http://x/v1", "m"))
    spec = catalog.get("remote-flash")
    params = spec.validate(prompt="x", n=1)
    task = Task("t", "k", spec.name, params, TaskStatus.RUNNING, "r", progress_total=2)
    out = task_output(task, spec, lambda key: key)
    assert out["task_progress"] == {"step": 0, "steps": 2, "reported": False}
