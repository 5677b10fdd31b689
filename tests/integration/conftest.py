"""The real service with tiny real pipelines, two ways.

In the test process (inprocess.py): the runtime and app `imagesynth serve` builds, served over
ASGI or by uvicorn on a free port, with worker threads. Most tests use these: `server`, `sdk`,
`idle_sdk` and `start_service`.

As subprocesses (`Launcher`, `start`): `imagesynth serve` and `imagesynth worker` on free
ports, for tests where processes are the point: crashes and restarts, several processes on one
database, the CLI, the SDK end to end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dashscope
import dashscope.client.base_api as dashscope_base_api
import httpx
import pytest

from imagesynth.config import Settings
from imagesynth.runtime import Runtime
from tests.integration.api_client import SUBMIT_PATH, ApiClient
from tests.integration.inprocess import (
    FAST_SETTINGS,
    InProcessService,
    Transport,
    create_key,
    home_settings,
    open_service,
)

__all__ = ["SUBMIT_PATH"]  # re-exported: tests import it from here

BIN = Path(sys.executable).parent / "imagesynth"


def imagesynth_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`imagesynth ARGS...` as a user runs it; it must exit 0. `env` defaults to this
    environment without IMAGESYNTH_* and DASHSCOPE_* variables."""
    return subprocess.run(
        [str(BIN), *args],
        env=clean_environment() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def clean_environment() -> dict[str, str]:
    """This process's environment without imagesynth's or the SDK's variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESYNTH_", "DASHSCOPE_"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- demo weights and homes ------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_weights(demo_root: Path) -> Path:
    """The session's demo weights (tests/conftest.py builds them once for unit and integration
    tests alike; test_cli.py checks that `imagesynth models make-demo` builds them too)."""
    return demo_root


@pytest.fixture(scope="session")
def make_settings(
    tmp_path_factory: pytest.TempPathFactory, demo_weights: Path
) -> Callable[..., Settings]:
    """Factory: the Settings of a fresh home; keyword arguments are more Settings fields."""

    def make(**overrides: Any) -> Settings:
        return home_settings(tmp_path_factory.mktemp("home"), demo_weights, **overrides)

    return make


# -- the service in the test process ---------------------------------------------------------


SDK_POLL_SECONDS = 0.1


class _QuickPolls:
    """The `time` module as the SDK's task wait sees it, sleeping at most SDK_POLL_SECONDS
    between queries: its own pace (1 s, growing to 5 s) suits the hosted service, and would
    make a call here take up to twice as long as its task."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, SDK_POLL_SECONDS))


@contextmanager
def sdk_at(api_url: str) -> Iterator[None]:
    """The official SDK's base URL set to `api_url` for the duration (and its waits for a
    task polling every SDK_POLL_SECONDS)."""
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = api_url
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dashscope_base_api, "time", _QuickPolls())
        try:
            yield
        finally:
            dashscope.base_http_api_url = saved


@contextmanager
def sdk_pointed_at(server: ApiClient) -> Iterator[ApiClient]:
    """The official SDK pointed at `server` for the duration (see sdk_at)."""
    with sdk_at(server.api):
        yield server


@pytest.fixture
def start_service(
    make_settings: Callable[..., Settings],
) -> Iterator[Callable[..., InProcessService]]:
    """Factory: a running in-process service on a fresh home, shut down after the test.

    start_service(workers=1, prompt_stage=False, transport="asgi", **settings); or on the
    state of an existing home with settings=home.settings (as a restarted `serve` would be)."""
    with ExitStack() as stack:

        def start(
            *,
            workers: int = 1,
            prompt_stage: bool = False,
            transport: Transport = "asgi",
            settings: Settings | None = None,
            **overrides: Any,
        ) -> InProcessService:
            assert settings is None or not overrides, "settings or overrides, not both"
            return stack.enter_context(
                open_service(
                    settings or make_settings(**overrides),
                    workers=workers,
                    prompt_stage=prompt_stage,
                    transport=transport,
                )
            )

        yield start


@pytest.fixture(scope="package")
def shared_asgi(make_settings: Callable[..., Settings]) -> Iterator[InProcessService]:
    with open_service(make_settings()) as service:
        yield service


@pytest.fixture(scope="package")
def shared_http(make_settings: Callable[..., Settings]) -> Iterator[InProcessService]:
    with open_service(make_settings(), transport="http") as service:
        yield service


@pytest.fixture(scope="module")
def server(shared_asgi: InProcessService, request: pytest.FixtureRequest) -> InProcessService:
    """An in-process service (ASGI, one worker) for tests that need no state of their own:
    one for all such modules (its pipelines load once), with a key of this module's own."""
    return shared_asgi.with_key(shared_asgi.create_key(request.module.__name__))


@pytest.fixture(scope="module")
def http_server(shared_http: InProcessService, request: pytest.FixtureRequest) -> InProcessService:
    """The same as `server` on a real port (for the SDK, or links fetched by URL)."""
    return shared_http.with_key(shared_http.create_key(request.module.__name__))


@pytest.fixture
def sdk(http_server: InProcessService) -> Iterator[InProcessService]:
    """The module's `http_server`, with the SDK pointed at it."""
    with sdk_pointed_at(http_server):
        yield http_server


@pytest.fixture
def idle_sdk(start_service: Callable[..., InProcessService]) -> Iterator[InProcessService]:
    """A fresh in-process service with no worker (tasks stay PENDING), the SDK pointed at it."""
    service = start_service(workers=0, transport="http")
    with sdk_pointed_at(service):
        yield service


# -- the service as subprocesses -------------------------------------------------------------


@dataclass
class Home:
    """One IMAGESYNTH_HOME: the state that server and worker processes share."""

    path: Path
    env: dict[str, str]
    settings: Settings  # the same settings as `env`, for work done in the test process

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return imagesynth_cli(*args, env=self.env, timeout=timeout)

    def create_key(self, name: str = "test", *, limited: bool = False, **changes: Any) -> str:
        """A new key on this home's database, made in the test process (inprocess.create_key;
        test_cli.py creates keys with the CLI)."""
        runtime = Runtime.open(self.settings)
        try:
            return create_key(runtime, name, limited=limited, **changes)
        finally:
            runtime.stores.close()

    def usage(self, **filters: str) -> list[dict[str, Any]]:
        """The usage report's rows (as `imagesynth usage --json` prints them), read in the
        test process; `filters`: key, model, since, by."""
        runtime = Runtime.open(self.settings)
        try:
            admin = runtime.admin()
            currency = admin.catalog.billing.currency
            return [row.to_json(currency) for row in admin.usage(**filters)]
        finally:
            runtime.stores.close()


@pytest.fixture(scope="session")
def make_home(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Callable[..., Home]:
    """Factory: a fresh IMAGESYNTH_HOME for subprocesses; keyword arguments become
    IMAGESYNTH_* settings."""

    def make(**settings: str) -> Home:
        path = tmp_path_factory.mktemp("home")
        env = clean_environment()
        values = {**FAST_SETTINGS, **settings}
        env.update(
            {
                "IMAGESYNTH_HOME": str(path),
                "IMAGESYNTH_DEMO_WEIGHTS_DIR": str(demo_weights),
                "HF_HUB_OFFLINE": "1",
            }
        )
        env.update({f"IMAGESYNTH_{k.upper()}": v for k, v in values.items()})
        return Home(path, env, home_settings(path, demo_weights, **settings))

    return make


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash or an OOM kill."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Server(ApiClient):
    """`imagesynth serve` in a subprocess."""

    home: Home
    proc: Proc
    port: int
    key: str
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = None, *, authorized: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"} if authorized else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


class Launcher:
    """Starts servers and workers as subprocesses; stops them all at the end."""

    def __init__(self, make_home: Callable[..., Home]) -> None:
        self.make_home = make_home
        self.procs: list[Proc] = []

    def _spawn(self, home: Home, args: list[str], name: str) -> Proc:
        log = home.path / f"{name}-{len(self.procs)}.log"
        with log.open("w") as f:
            popen = subprocess.Popen(
                [str(BIN), *args], env=home.env, stdout=f, stderr=subprocess.STDOUT, text=True
            )
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def __call__(
        self, home: Home | None = None, worker: bool = True, key: str | None = None
    ) -> Server:
        """`imagesynth serve` (with its in-process worker unless worker=False), ready."""
        home = home or self.make_home()
        key = key or home.create_key()
        port = free_port()
        args = ["serve", "--port", str(port)] + ([] if worker else ["--no-worker"])
        proc = self._spawn(home, args, "serve")
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not proc.alive() or time.monotonic() > deadline:
                raise AssertionError("server did not start:\n" + proc.output())
            time.sleep(0.1)
        return Server(home, proc, port, key)

    def worker(self, home: Home, *args: str) -> Proc:
        """A separate `imagesynth worker ARGS...` process on the home's state."""
        return self._spawn(home, ["worker", *args], "worker")

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def start(make_home: Callable[..., Home]) -> Iterator[Launcher]:
    launcher = Launcher(make_home)
    yield launcher
    launcher.stop_all()
