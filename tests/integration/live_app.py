"""The real app served by uvicorn in a thread of the test process, on SQLite or PostgreSQL.

For tests about the HTTP edge (bad input, protocol errors, keep-alive after an error), where
a worker is not needed: the server is built exactly as `imagesynth serve` builds it
(api/server.py), so what reaches the app has passed the same HTTP parser."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from imagesynth.api.app import create_app
from imagesynth.api.context import Services
from imagesynth.config import Settings
from imagesynth.runtime import Runtime
from tests.conftest import fresh_postgres_schema
from tests.integration.inprocess import uvicorn_thread

ADMIN_TOKEN = "test-admin-token"


@dataclass
class LiveApp:
    url: str
    port: int
    services: Services
    key: str  # an API key with limits out of the way

    def client(self, key: str | None = None) -> httpx.Client:
        """A keep-alive client: every request of one client goes over one connection."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=30,
            limits=httpx.Limits(max_connections=1),
        )

    def admin(self) -> httpx.Client:
        return self.client(ADMIN_TOKEN)

    def raw(self, request: bytes, timeout: float = 10) -> tuple[bytes, socket.socket]:
        """Send raw bytes on a new connection; the reply's bytes and the still open socket."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.sendall(request)
        return read_reply(sock), sock


def read_reply(sock: socket.socket) -> bytes:
    """One HTTP/1.1 reply with a Content-Length body, read from the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@contextmanager
def live_app(home: Path, database_url: str | None = None) -> Iterator[LiveApp]:
    """Serve the app of a fresh home (SQLite there, or `database_url`) until the block ends."""
    settings = Settings(
        home=home,
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        invisible_watermark=False,
        # Out of the way of tests about other things: no rate limit on queries, and a
        # synchronous call (no worker runs here) gives up at once.
        query_rps=100_000,
        sync_timeout_seconds=0.5,
    )
    rt = Runtime.open(settings)
    services = rt.services()
    _, key = services.admin.create("edge", {"rps": 1000, "in_flight": 100, "max_pending": 10_000})
    try:
        with uvicorn_thread(create_app(services)) as url:
            yield LiveApp(url, int(url.rsplit(":", 1)[1]), services, key)
    finally:
        rt.stores.close()


@contextmanager
def live_app_on(database: str, home: Path) -> Iterator[LiveApp]:
    """live_app on SQLite in `home` ("sqlite"), or on a fresh PostgreSQL schema ("postgres";
    the test is skipped where no server is configured)."""
    if database == "sqlite":
        with live_app(home) as app:
            yield app
        return
    with fresh_postgres_schema() as url, live_app(home, url) as app:
        yield app
