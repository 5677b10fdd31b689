"""How the app is served: uvicorn on its h11 parser, answering requests that parser refuses
(a NUL in a header, a bad or conflicting Content-Length, headers over the limit) in the API's
own error shape instead of uvicorn's text/plain "Invalid HTTP request received."

h11 rather than httptools whatever is installed: one parser, whose limits are the ones the
README documents, and whose error is the one answered here.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import h11
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

# The request line and headers together, in bytes, and the number of headers (README).
# h11 refuses a request whose head is still incomplete past MAX_HEADER_BYTES (so a 1 MB
# header never gets buffered), but not one whose longer head arrived in a single read, nor
# any number of headers: LimitHeaders checks both on every request it hands on.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100


class _RecordingConnection(h11.Connection):
    """An h11 connection that remembers why it refused the peer, for the reply."""

    refusal: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = exc
            raise


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, whose protocol-level refusals are DashScope error bodies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _RecordingConnection(h11.SERVER, self.conn._max_incomplete_event_size)

    def send_400_response(self, msg: str) -> None:
        refusal = getattr(self.conn, "refusal", None)
        too_large = refusal is not None and refusal.error_status_hint == 431
        status = 431 if too_large else 400
        # h11's reason without the bytes it may quote ("illegal header line: bytearray(...)").
        reason = str(refusal).partition(":")[0] if refusal is not None else ""
        message = (
            f"At most {MAX_HEADERS} request headers of {MAX_HEADER_BYTES} bytes in all."
            if too_large
            else f"Invalid HTTP request: {reason or msg}."
        )
        body = json.dumps(
            {
                "request_id": str(uuid.uuid4()),
                "code": "BadRequest.TooLarge" if too_large else "BadRequest",
                "message": message,
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            for event in (
                h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:
            pass  # a response had already begun on this connection: nothing more can be said
        self.transport.close()


class LimitHeaders:
    """Pure ASGI middleware: 431 BadRequest.TooLarge for more than MAX_HEADERS headers or
    MAX_HEADER_BYTES of them; the connection stays open, as the request was well formed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) + 4 for name, value in headers)
            if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
                message = (
                    f"At most {MAX_HEADERS} request headers of {MAX_HEADER_BYTES} bytes in all."
                )
                response = JSONResponse(
                    {
                        "request_id": str(uuid.uuid4()),
                        "code": "BadRequest.TooLarge",
                        "message": message,
                    },
                    status_code=431,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def server_config(app: Any, *, host: str, port: int, log_level: str) -> uvicorn.Config:
    """The uvicorn configuration `imagesynth serve` (and the edge tests) run the app with."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=JsonErrorH11Protocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
