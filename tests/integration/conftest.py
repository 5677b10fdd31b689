"""The real service in subprocesses on free ports, over real HTTP, with tiny real pipelines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dashscope
import httpx
import pytest

BIN = Path(sys.executable).parent / "imagesynth"
SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Home:
    """One IMAGESYNTH_HOME: the state that server and worker processes share."""

    path: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def create_key(self, name: str = "test", *options: str, limited: bool = False) -> str:
        """A new key. Unless `limited`, with limits out of the way of tests about other
        things; `options` are more `keys create` flags."""
        generous = (
            () if limited else ("--rps", "1000", "--in-flight", "100", "--max-pending", "10000")
        )
        return self.cli("keys", "create", "--name", name, *generous, *options).stdout.strip()


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
class Server:
    home: Home
    proc: Proc
    port: int
    key: str
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=60,
        )

    def submit(self, body: dict[str, Any], key: str | None = None) -> str:
        with self.client(key) as c:
            r = c.post(SUBMIT_PATH, json=body, headers={"X-DashScope-Async": "enable"})
        assert r.status_code == 200, r.text
        return str(r.json()["output"]["task_id"])

    def query(self, task_id: str, key: str | None = None) -> dict[str, Any]:
        with self.client(key) as c:
            r = c.get(f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

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


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo weights built once, through the CLI a user would run."""
    root = tmp_path_factory.mktemp("demo-weights")
    subprocess.run(
        [str(BIN), "models", "make-demo", str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root


@pytest.fixture(scope="session")
def make_home(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Callable[..., Home]:
    """Factory: a fresh IMAGESYNTH_HOME; keyword arguments become IMAGESYNTH_* settings."""

    def make(**settings: str) -> Home:
        path = tmp_path_factory.mktemp("home")
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("IMAGESYNTH_", "DASHSCOPE_"))
        }
        env.update(
            {
                "IMAGESYNTH_HOME": str(path),
                "IMAGESYNTH_DEMO_WEIGHTS_DIR": str(demo_weights),
                "IMAGESYNTH_LEASE_SECONDS": "2",
                "IMAGESYNTH_MAINTENANCE_INTERVAL_SECONDS": "0.3",
                "IMAGESYNTH_WORKER_POLL_SECONDS": "0.05",
                "HF_HUB_OFFLINE": "1",
            }
        )
        env.update({f"IMAGESYNTH_{k.upper()}": v for k, v in settings.items()})
        return Home(path, env)

    return make


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

    def worker(self, home: Home) -> Proc:
        """A separate `imagesynth worker` process on the home's state."""
        return self._spawn(home, ["worker"], "worker")

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def start(make_home: Callable[..., Home]) -> Iterator[Launcher]:
    launcher = Launcher(make_home)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def server(make_home: Callable[..., Home]) -> Iterator[Server]:
    """One server shared by a module's tests: for tests that need no state of their own."""
    launcher = Launcher(make_home)
    yield launcher()
    launcher.stop_all()


@contextmanager
def sdk_pointed_at(server: Server) -> Iterator[Server]:
    """The official SDK's base URL pointed at `server` for the duration."""
    saved = dashscope.base_http_api_url
    dashscope.base_http_api_url = server.api
    try:
        yield server
    finally:
        dashscope.base_http_api_url = saved


@pytest.fixture
def sdk(server: Server) -> Iterator[Server]:
    """The module's server, with the SDK pointed at it."""
    with sdk_pointed_at(server):
        yield server


@pytest.fixture
def idle_sdk(start: Launcher) -> Iterator[Server]:
    """A server with no worker (tasks stay PENDING), with the SDK pointed at it."""
    with sdk_pointed_at(start(worker=False)) as server:
        yield server
