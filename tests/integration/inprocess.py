"""The real service built in the test process, as `imagesynth serve` builds it.

From a real Settings on a temporary IMAGESYNTH_HOME (a real SQLite store, real result files):
`Runtime.open(settings)`, `rt.services()`, `create_app(services, on_startup, on_shutdown)`, with
the background work `serve` starts in the app's lifespan: the maintenance pass, the webhook
sender, the prompt stage (where asked for) and worker threads running `rt.worker().run(stop)`
on the tiny demo pipelines. Nothing but those entry points (and the admin service, for keys) is
used, so the harness holds while the insides of `imagesynth` move.

Two transports, both running the app's lifespan (startup and shutdown hooks):

- "asgi": starlette's TestClient calls the app directly; no socket. For tests of HTTP
  behaviour (status codes, bodies, headers) that only this test talks to.
- "http": uvicorn on a free 127.0.0.1 port in a thread. For the official `dashscope` SDK,
  which needs a real URL, and for anything that needs a real connection (a client that hangs
  up, result links fetched by URL).

What needs several processes (crashes, restarts, several API processes on one database, the
CLI itself) runs as subprocesses instead: see conftest.py.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from starlette.testclient import TestClient

from imagesynth.api.app import create_app
from imagesynth.api.server import server_config
from imagesynth.config import Settings
from imagesynth.runtime import Runtime
from tests.integration.api_client import ApiClient, HttpClient

Transport = Literal["asgi", "http"]

# Quick leases and polls, so that what waits on them (a dead worker's task, retention, an
# idle worker) takes a fraction of a second; the same for subprocesses (conftest.make_home).
FAST_SETTINGS = {
    "lease_seconds": "2",
    "maintenance_interval_seconds": "0.3",
    "worker_poll_seconds": "0.05",
}

# Limits out of the way of tests about other things (as `keys create --rps 1000
# --in-flight 100 --max-pending 10000`).
GENEROUS: dict[str, Any] = {"rps": 1000, "in_flight": 100, "max_pending": 10000}


class IsolatedSettings(Settings):
    """Settings from keyword arguments only: IMAGESYNTH_* variables of whoever runs the tests
    don't leak in (a subprocess gets a cleaned environment for the same reason)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def home_settings(home: Path, demo_weights: Path, **overrides: Any) -> Settings:
    """The settings of a test home: its state in `home`, the session's demo weights, quick
    leases and polls, and `overrides` (Settings field names, as for IMAGESYNTH_<NAME>)."""
    return IsolatedSettings(
        home=home, demo_weights_dir=demo_weights, **{**FAST_SETTINGS, **overrides}
    )


def create_key(
    runtime: Runtime, name: str = "test", *, limited: bool = False, **changes: Any
) -> str:
    """A new key's secret, made by the admin service (what `imagesynth keys create` runs).
    Unless `limited`, with GENEROUS limits for every model; `changes` are key settings as the
    admin API takes them (free_tier_only, monthly_cap, max_pending, model, rps, in_flight,
    free_quota)."""
    assert limited or "model" not in changes, "a per-model change needs limited=True"
    _, secret = runtime.admin().create(name, {**({} if limited else GENEROUS), **changes})
    return secret


class _KeyedClient:
    """The service's TestClient with this client's headers on every request."""

    def __init__(self, client: TestClient, headers: Mapping[str, str]) -> None:
        self._client = client
        self._headers = dict(headers)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **(kwargs.pop("headers", None) or {})}
        kwargs.pop("timeout", None)  # no network in between, nothing to time out
        kwargs.setdefault("follow_redirects", False)  # as httpx.Client
        return self._client.request(method, url, headers=headers, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)


class InProcessService(ApiClient):
    """One service: its runtime and app, its background threads, a default key."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int = 1,
        prompt_stage: bool = False,
        transport: Transport = "asgi",
    ) -> None:
        self.settings = settings
        self.path = settings.home_dir
        self.transport = transport
        self.runtime = Runtime.open(settings)
        self.services = self.runtime.services()
        self.app = create_app(
            self.services, on_startup=self._start_background, on_shutdown=self._stop_background
        )
        self.key = self.create_key()
        self.url = "http://testserver"
        self._workers = workers
        self._prompt_stage = prompt_stage
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._test_client: TestClient | None = None
        self.started = self.stopped = False

    # -- what `serve` starts and stops in the app's lifespan ----------------------------------

    def _start_background(self) -> None:
        s = self.settings
        self._threads.append(
            self.runtime.maintenance().start(self._stop, s.maintenance_interval_seconds)
        )
        self._threads.append(self.runtime.webhook_sender(self.url).start(self._stop))
        if self._prompt_stage:
            self._threads.extend(self.runtime.prompt_stage().start(self._stop))
        for _ in range(self._workers):
            self.start_worker()
        self.started = True

    def _stop_background(self) -> None:
        self._stop.set()
        for thread in self._threads:
            # A worker stops at its next denoising step and hands its task back.
            thread.join(timeout=60)
        self.stopped = True

    def start_worker(self, models: list[str] | None = None) -> None:
        """One more worker thread (as another `imagesynth worker` on this home would be)."""
        worker = self.runtime.worker(models)
        thread = threading.Thread(target=worker.run, args=(self._stop,), name="worker", daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- keys and credentials -----------------------------------------------------------------

    def create_key(self, name: str = "test", *, limited: bool = False, **changes: Any) -> str:
        return create_key(self.runtime, name, limited=limited, **changes)

    def with_key(self, key: str) -> InProcessService:
        """The same running service, with `key` as the default key of what is done through
        the copy (a key sees only its own tasks: a view of a shared service of one's own)."""
        view = copy.copy(self)
        view.key = key
        return view

    @property
    def admin_token(self) -> str:
        """The admin API's credential (what `imagesynth admin-token` prints)."""
        return self.services.admin.token

    # -- transport ----------------------------------------------------------------------------

    def client(
        self, key: str | None = None, *, authorized: bool = True
    ) -> AbstractContextManager[HttpClient]:
        headers = {"Authorization": f"Bearer {key or self.key}"} if authorized else {}
        if self._test_client is not None:
            return nullcontext(_KeyedClient(self._test_client, headers))
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    @contextmanager
    def running(self) -> Iterator[InProcessService]:
        """The app served, its lifespan started, until the block ends; then shut down as
        `serve` shuts down (background threads stopped, a running task handed back)."""
        try:
            with self._served():
                assert self.started, "the app's lifespan did not run its startup hook"
                yield self
            assert self.stopped, "the app's lifespan did not run its shutdown hook"
        finally:
            self.runtime.stores.close()

    @contextmanager
    def _served(self) -> Iterator[None]:
        if self.transport == "asgi":
            with TestClient(self.app, base_url=self.url) as test_client:
                self._test_client = test_client
                try:
                    yield
                finally:
                    self._test_client = None
        else:
            sock = loopback_socket()
            # Known before the lifespan starts: the webhook sender's links start with it.
            self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            with uvicorn_thread(self.app, sock):
                yield


def loopback_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def uvicorn_thread(app: Any, sock: socket.socket | None = None) -> Iterator[str]:
    """`app` served as `imagesynth serve` serves it (api/server.py `server_config`: the same
    HTTP protocol class and limits) on a free loopback port (or `sock`) from a thread; its
    base URL."""
    sock = sock or loopback_socket()
    port = sock.getsockname()[1]
    config = server_config(app, host="127.0.0.1", port=port, log_level="warning")
    config.lifespan = "on"
    config.timeout_graceful_shutdown = 10
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped during startup (see the log above)"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def open_service(
    settings: Settings,
    *,
    workers: int = 1,
    prompt_stage: bool = False,
    transport: Transport = "asgi",
) -> AbstractContextManager[InProcessService]:
    """A running in-process service on `settings` for the duration of a `with` block."""
    return InProcessService(
        settings, workers=workers, prompt_stage=prompt_stage, transport=transport
    ).running()
