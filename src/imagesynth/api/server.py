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
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

# The request line and headers together, in bytes (h11 buffers at most this much before a
# request is complete); also what bounds the number of headers. The README documents it.
MAX_HEADER_BYTES = 16 * 1024


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
            f"Request headers are larger than {MAX_HEADER_BYTES} bytes in all."
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
