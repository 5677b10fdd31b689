"""A task's progress stream (GET /api/v1/tasks/{id} with Accept: text/event-stream, and
.../events), read by a client while a separate `imagesynth worker` process runs the task."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
from PIL import Image

from tests.integration.conftest import SUBMIT_PATH, Launcher
from tests.integration.inprocess import InProcessService

BODY: dict[str, Any] = {
    "model": "wanx2.1-t2i-turbo",
    "input": {"prompt": "a long walk"},
    "parameters": {"n": 1, "size": "1024*1024", "steps": 12, "seed": 3, "partial_images": 2},
}


def events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    event, data = "", ""
    for line in lines:
        if not line:
            if data:
                yield event, json.loads(data)
            event, data = "", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:]


def test_stream_through_a_separate_worker(start: Launcher) -> None:
    server = start(worker=False)
    start.worker(server.home)
    with server.client() as c:
        r = c.post(SUBMIT_PATH, json=BODY, headers={"X-DashScope-Async": "enable"})
        task_id = r.json()["output"]["task_id"]
        seen: list[tuple[str, dict[str, Any]]] = []
        with c.stream(
            "GET",
            f"/api/v1/tasks/{task_id}",
            params={"previews": "true"},
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(120, read=120),
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            seen = list(events(stream.iter_lines()))
    statuses = [d["task_status"] for e, d in seen if e == "status"]
    assert statuses[-1] == "SUCCEEDED" and "RUNNING" in statuses
    steps = [d["step"] for e, d in seen if e == "progress"]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] > steps[0], steps
    assert all(d["steps"] == 12 for e, d in seen if e == "progress")
    previews = [d["preview"] for e, d in seen if e == "progress" and "preview" in d]
    assert len(previews) == 2
    head, b64 = previews[0].split(",", 1)
    assert head == "data:image/jpeg;base64"
    # A latent-resolution picture (the demo VAE's 1/16), not a decoded image.
    assert Image.open(io.BytesIO(base64.b64decode(b64))).size == (64, 64)
    event, result = seen[-1]
    assert event == "result"
    assert result["output"]["task_status"] == "SUCCEEDED"
    assert len(result["output"]["results"]) == 1


def test_events_path_of_an_ended_and_an_unknown_task(http_server: InProcessService) -> None:
    with http_server.client() as c:
        r = c.post(
            SUBMIT_PATH,
            json={**BODY, "parameters": {"size": "512*512", "n": 1}},
            headers={"X-DashScope-Async": "enable"},
        )
        task_id = r.json()["output"]["task_id"]
        with c.stream("GET", f"/api/v1/tasks/{task_id}/events") as stream:
            seen = list(events(stream.iter_lines()))
        assert seen[-1][0] == "result"
        assert seen[-1][1]["output"]["task_status"] == "SUCCEEDED"
        with c.stream("GET", "/api/v1/tasks/no-such-task/events") as stream:
            ((event, data),) = list(events(stream.iter_lines()))
        assert (event, data["output"]["task_status"]) == ("result", "UNKNOWN")
    with http_server.anonymous() as anonymous:
        r = anonymous.get(f"/api/v1/tasks/{task_id}/events")
    assert r.status_code == 401
