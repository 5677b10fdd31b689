"""A small reverse proxy that rewrites Host, as nginx's `proxy_set_header Host $upstream` does:
clients reach it on `localhost:<its port>`, and the service behind sees `127.0.0.1:<its port>`.

Were the service to redirect (a 307 built from the Host it sees), the client would follow the
redirect to the other origin and, as aiohttp and requests do, drop its Authorization header.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "host",
}


@contextmanager
def host_rewriting_proxy(upstream: str) -> Iterator[tuple[str, list[tuple[str, str, int]]]]:
    """(the proxy's base URL on `localhost`, the log of (method, path, status) it forwarded)."""
    target = urlsplit(upstream)
    log: list[tuple[str, str, int]] = []
    client = httpx.Client(base_url=upstream, follow_redirects=False, timeout=120)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Host"] = target.netloc  # the rewrite
            r = client.request(self.command, self.path, content=body, headers=headers)
            log.append((self.command, self.path, r.status_code))
            self.send_response(r.status_code)
            for name, value in r.headers.multi_items():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        client.close()
