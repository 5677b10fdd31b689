"""DashScope's Server-Sent Events framing, for callers that ask for a stream.

A call asks with `X-DashScope-SSE: enable` or `Accept: text/event-stream` (the SDKs send
both with `stream=True`). Each frame is

    id:1
    event:result
    :HTTP_STATUS/200
    data:{...the reply...}

and an error is the same frame with `event:error`, its status and `{code, message,
request_id}`: before the stream has begun, under that HTTP status too (the SDK reads it
either way).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.responses import Response

MEDIA_TYPE = "text/event-stream"
# Proxies must pass frames through as they come, and nobody may cache them.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A comment line: clients skip it; it keeps idle proxies from closing a long wait.
KEEP_ALIVE = b": keep-alive\n\n"


def wants_stream(request: Request) -> bool:
    return request.headers.get("x-dashscope-sse", "").strip().lower() == "enable" or (
        MEDIA_TYPE in request.headers.get("accept", "").lower()
    )


def mark_stream(request: Request) -> None:
    """Record whether this request asked for a stream, so that its errors are framed as
    events too (api/errors.py); first thing in a route that can stream."""
    request.state.sse = wants_stream(request)


def streams(request: Request) -> bool:
    return bool(getattr(request.state, "sse", False))


def frame(event_id: int, event: str, status: int, data: dict[str, Any]) -> bytes:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id:{event_id}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:{body}\n\n".encode()


def event(kind: str, data: dict[str, Any]) -> bytes:
    """A plain event (the OpenAI front's framing: no id, no status comment)."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {body}\n\n".encode()


def error_frame(event_id: int, request_id: str, status: int, code: str, message: str) -> bytes:
    return frame(
        event_id, "error", status, {"code": code, "message": message, "request_id": request_id}
    )


def error_stream(status: int, request_id: str, code: str, message: str) -> Response:
    """An error answered to a request that asked for a stream: one error frame."""
    return Response(
        error_frame(1, request_id, status, code, message),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=HEADERS,
    )
