"""A webhook receiver for tests: a threaded HTTP server on 127.0.0.1 that records every POST
(headers and raw body) and answers a status the test sets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(self, port: int = 0, status: int = 204) -> None:
        self.status = status
        self.received: list[Received] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._arrived:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    receiver._arrived.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """The first `count` requests, once that many arrived."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.received)} of {count} webhooks arrived"
                self._arrived.wait(left)
            return self.received[:count]


@contextmanager
def receiver(port: int = 0, status: int = 204) -> Iterator[Receiver]:
    """A Receiver serving from a thread until the block ends."""
    r = Receiver(port, status)
    thread = threading.Thread(target=r.server.serve_forever, name="receiver", daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        thread.join(timeout=10)
