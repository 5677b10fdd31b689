"""Result files, served only at signed, expiring URLs (no API key: the URL is the credential,
as with DashScope's OSS links)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from imagesynth.api import openapi
from imagesynth.api.context import services_of
from imagesynth.errors import ResourceNotFound, SignatureInvalid
from imagesynth.storage.png import media_type

router = APIRouter()


def _raw_path(request: Request) -> str:
    """The request's path as it was sent (percent-escapes intact), below any root path."""
    raw = request.scope.get("raw_path")
    if raw is None:  # a server that doesn't pass it on: as decoded, in canonical spelling
        return quote(request.url.path)
    text = bytes(raw).decode("latin-1")
    root = request.scope.get("root_path", "")
    return text[len(root) :] if root and text.startswith(root) else text


@router.get(
    "/files/{key:path}",
    openapi_extra=openapi.operation(
        parameters=[
            openapi.query("Expires", "Unix time the link expires.", required=True),
            openapi.query("Signature", "HMAC of the path and Expires.", required=True),
        ],
        auth=False,
    ),
)
async def get_file(request: Request, key: str) -> Response:
    svc = services_of(request)
    # Verified on the request as sent, so each signed URL has exactly one accepted spelling.
    path = svc.signer.verify_request(
        _raw_path(request), request.scope.get("query_string", b"").decode("latin-1")
    )
    if path != f"/files/{key}":
        raise SignatureInvalid("The URL is not in the form it was signed in.")
    data = await run_in_threadpool(svc.blobs.read, key)
    if data is None:
        raise ResourceNotFound("The file does not exist or has expired.")
    return Response(data, media_type=media_type(key))


@router.get("/health", openapi_extra=openapi.operation(auth=False))
async def health() -> dict[str, str]:
    return {"status": "ok"}
