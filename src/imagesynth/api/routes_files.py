"""Result files, served only at signed, expiring URLs (no API key: the URL is the credential,
as with DashScope's OSS links)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from imagesynth.api.context import services_of
from imagesynth.errors import ResourceNotFound

router = APIRouter()


@router.get("/files/{key:path}")
async def get_file(request: Request, key: str) -> FileResponse:
    svc = services_of(request)
    svc.signer.verify(
        f"/files/{key}", request.query_params.get("Expires"), request.query_params.get("Signature")
    )
    path = svc.blobs.path(key)
    if path is None:
        raise ResourceNotFound("The file does not exist or has expired.")
    return FileResponse(path, media_type="image/png")


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
