"""What a test does with a running service over HTTP, whichever way it runs: submit, query,
wait, fetch result files. Subclasses say how to reach it (a subprocess on a port, or the
app in the test process)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import httpx
from PIL import Image

SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
ASYNC = {"X-DashScope-Async": "enable"}


class HttpClient(Protocol):
    """The part of httpx.Client the tests use (starlette's TestClient has it too)."""

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response: ...
    def get(self, url: str, **kwargs: Any) -> httpx.Response: ...
    def post(self, url: str, **kwargs: Any) -> httpx.Response: ...
    def patch(self, url: str, **kwargs: Any) -> httpx.Response: ...
    def delete(self, url: str, **kwargs: Any) -> httpx.Response: ...


def png_of(r: httpx.Response) -> Image.Image:
    """The PNG a result-file response carries, checked to be one."""
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG"
    image.load()
    return image


class ApiClient:
    """A running service and the key its tests use by default."""

    url: str
    key: str

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def client(
        self, key: str | None = None, *, authorized: bool = True
    ) -> AbstractContextManager[HttpClient]:
        """A client sending `Authorization: Bearer <key>` (the default key unless given;
        no Authorization header at all unless `authorized`)."""
        raise NotImplementedError

    def anonymous(self) -> AbstractContextManager[HttpClient]:
        return self.client(authorized=False)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET an absolute URL the service handed out (a result file, an upload host)."""
        with self.anonymous() as c:
            return c.get(url, **kwargs)

    def fetch_png(self, url: str) -> Image.Image:
        return png_of(self.get(url))

    def submit(self, body: dict[str, Any], key: str | None = None) -> str:
        with self.client(key) as c:
            r = c.post(SUBMIT_PATH, json=body, headers=ASYNC)
        assert r.status_code == 200, r.text
        return str(r.json()["output"]["task_id"])

    def query(self, task_id: str, key: str | None = None) -> dict[str, Any]:
        with self.client(key) as c:
            r = c.get(f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def tasks(self, key: str | None = None) -> list[dict[str, Any]]:
        """The key's task list (the last 24 h, newest first)."""
        with self.client(key) as c:
            r = c.get("/api/v1/tasks")
        assert r.status_code == 200, r.text
        return list(r.json()["data"])

    def wait(
        self,
        task_id: str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 120,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Poll until `until(reply)` (default: the task ended)."""
        done = until or (
            lambda r: r["output"]["task_status"] in ("SUCCEEDED", "FAILED", "CANCELED")
        )
        deadline = time.monotonic() + timeout
        while True:
            reply = self.query(task_id, key)
            if done(reply):
                return reply
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} timed out in state {reply}")
            time.sleep(0.1)
