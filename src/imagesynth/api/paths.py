"""One answer per path, slash or no slash.

Starlette answers `/api/v1/tasks/<id>/` with a 307 to the path without the slash, built from
the request's Host. The dashscope SDK's asyncio client polls `.../tasks/<id>/?...`; behind a
reverse proxy that rewrites Host, aiohttp follows that redirect to another origin, drops the
Authorization header and gets 401. So a trailing slash is dropped before routing instead: the
route answers directly, whatever the proxy in front.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

# Signed file URLs are checked as sent, so each has exactly one spelling: not normalised.
_AS_SENT = "/files/"


def without_trailing_slash(path: str) -> str:
    """'/a/b/' -> '/a/b', '/a//' -> '/a'; '/' stays '/'."""
    stripped = path.rstrip("/")
    return stripped or "/"


class DropTrailingSlash:
    """Pure ASGI middleware: routes see the path without its trailing slashes (the raw path
    too, so what is logged and signed agrees with what was routed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and len(path) > 1
            and path.endswith("/")
            and not path.startswith(_AS_SENT)
        ):
            scope = dict(scope)
            scope["path"] = without_trailing_slash(path)
            raw = scope.get("raw_path")
            if raw is not None:
                scope["raw_path"] = bytes(raw).rstrip(b"/") or b"/"
        await self.app(scope, receive, send)
