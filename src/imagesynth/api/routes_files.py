"""Result files, served only at signed, expiring URLs (no API key: the URL is the credential,
as with DashScope's OSS links)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from imagesynth.api import openapi
from imagesynth.api.context import services_of
from imagesynth.errors import ResourceNotFound

router = APIRouter()


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
    svc.signer.verify(
        f"/files/{key}", request.query_params.get("Expires"), request.query_params.get("Signature")
    )
    data = await run_in_threadpool(svc.blobs.read, key)
    if data is None:
        raise ResourceNotFound("The file does not exist or has expired.")
    return Response(data, media_type="image/png")


@router.get("/health", openapi_extra=openapi.operation(auth=False))
async def health() -> dict[str, str]:
    return {"status": "ok"}
