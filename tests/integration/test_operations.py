"""/ready, /metrics and the workers table, on the real service in the test process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from imagesynth.config import Settings
from tests.integration.inprocess import InProcessService, open_service
from tests.integration.tcp_proxy import tcp_proxy

QUICK: dict[str, Any] = {
    "model": "wanx2.1-t2i-turbo",
    "input": {"prompt": "a quick one"},
    "parameters": {"n": 1, "size": "512*512", "steps": 2, "seed": 1},
}


def ready(service: InProcessService) -> httpx.Response:
    with service.anonymous() as c:
        return c.get("/ready")


def wait_ready(service: InProcessService, want: int, timeout: float = 60) -> httpx.Response:
    """Poll /ready until it answers `want` (200 or 503)."""
    deadline = time.monotonic() + timeout
    while True:
        r = ready(service)
        if r.status_code == want:
            return r
        assert time.monotonic() < deadline, f"/ready stayed {r.status_code}: {r.text}"
        time.sleep(0.1)


def test_ready_when_a_worker_serves_every_model(
    start_service: Callable[..., InProcessService],
) -> None:
    service = start_service(workers=1)
    body = wait_ready(service, 200).json()
    assert body["status"] == "ready"
    assert body["checks"] == {"database": "ok", "blobs": "ok", "workers": "ok"}
    with service.anonymous() as c:
        assert c.get("/health").json() == {"status": "ok"}  # liveness, unchanged


def test_not_ready_without_workers_names_the_models(
    start_service: Callable[..., InProcessService],
) -> None:
    service = start_service(workers=0)
    r = ready(service)
    assert r.status_code == 503
    body = r.json()
    models = sorted(service.runtime.catalog.models)
    assert sorted(body["unserved"]) == models
    assert body["checks"]["database"] == "ok"
    for model in models:
        assert model in body["checks"]["workers"]


def test_a_worker_that_stops_leaves_the_table(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    with open_service(settings, workers=1) as service:
        wait_ready(service, 200)
        stores = service.runtime.stores
        assert stores.workers.worker_count(settings.lease_seconds) == 1
    # Shut down cleanly: the row is gone at once, not a lease later.
    with open_service(settings, workers=0) as service:
        assert service.runtime.stores.workers.worker_count(3600) == 0
        assert ready(service).status_code == 503


@pytest.mark.postgres
def test_not_ready_while_the_database_is_unreachable(
    postgres_url: str, make_settings: Callable[..., Settings]
) -> None:
    parts = urlsplit(postgres_url)
    assert parts.hostname is not None
    with tcp_proxy((parts.hostname, parts.port or 5432)) as proxy:
        netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
        url = urlunsplit(parts._replace(netloc=netloc))
        with open_service(make_settings(database_url=url), workers=1) as service:
            wait_ready(service, 200)
            proxy.cut()
            body = wait_ready(service, 503).json()
            assert body["checks"]["database"].startswith("unreachable")
            assert body["checks"]["blobs"] == "ok"
            proxy.restore()
            # Every thread's connection reopens: the API's checks and the worker's beats.
            assert wait_ready(service, 200).json()["status"] == "ready"
            task = service.wait(service.submit(QUICK))
            assert task["output"]["task_status"] == "SUCCEEDED"


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_metrics_count_tasks_durations_and_refusals(
    start_service: Callable[..., InProcessService],
) -> None:
    service = start_service(workers=1)
    n, model = 3, QUICK["model"]
    for task_id in [service.submit(QUICK) for _ in range(n)]:
        assert service.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
    with service.client() as c:
        refused = c.post(
            "/api/v1/services/aigc/text2image/image-synthesis",
            json={**QUICK, "model": "no-such-model"},
            headers={"X-DashScope-Async": "enable"},
        )
    assert refused.status_code == 404
    code = refused.json()["code"]
    with service.anonymous() as c:
        r = c.get("/metrics")  # no credential, as /health
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    m = {"model": model}
    assert sample(text, "imagesynth_tasks_finished_total", status="SUCCEEDED", **m) == n
    assert sample(text, "imagesynth_tasks", status="SUCCEEDED", **m) == n
    for histogram in ("queue_wait", "generation", "postprocess", "end_to_end"):
        assert sample(text, f"imagesynth_{histogram}_seconds_count", **m) == n, histogram
    assert sample(text, "imagesynth_refusals_total", code=code) == 1
    assert sample(text, "imagesynth_database_up") == 1
    assert sample(text, "imagesynth_workers_live") == 1
    assert sample(text, "imagesynth_pipelines_loaded") == 1
    assert sample(text, "imagesynth_queue_depth", **m) == 0  # nothing waits


def test_metrics_report_the_queue_per_model(
    start_service: Callable[..., InProcessService],
) -> None:
    service = start_service(workers=0)
    for _ in range(2):
        service.submit(QUICK)
    time.sleep(0.05)
    with service.anonymous() as c:
        text = c.get("/metrics").text
    m = {"model": QUICK["model"]}
    assert sample(text, "imagesynth_queue_depth", **m) == 2
    assert sample(text, "imagesynth_queue_oldest_wait_seconds", **m) > 0
    assert sample(text, "imagesynth_tasks", status="PENDING", **m) == 2
    assert sample(text, "imagesynth_workers_live") == 0
