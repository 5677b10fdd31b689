"""The SDK's upload flow: a policy from the API, then a form post to the upload host (here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from imagesynth.api import openapi
from imagesynth.api.context import (
    authenticate,
    declared_length,
    public_base_url,
    request_id_of,
    services_of,
)
from imagesynth.api.upload_form import UploadFormParser
from imagesynth.errors import InputTooLarge, InvalidParameter
from imagesynth.inputs.uploads import UploadPolicy, store_upload

router = APIRouter()

UPLOAD_HOST_PATH = "/uploads/oss"
_FORM_OVERHEAD_BYTES = 64 * 1024
# The OSS-style form the SDK posts with the policy's fields (only these four are read).
_UPLOAD_FORM = {
    "type": "object",
    "required": ["policy", "Signature", "key", "file"],
    "properties": {
        "OSSAccessKeyId": {"type": "string"},
        "policy": {"type": "string"},
        "Signature": {"type": "string"},
        "key": {"type": "string", "description": "<upload_dir>/<file name> from the policy"},
        "x-oss-object-acl": {"type": "string"},
        "x-oss-forbid-overwrite": {"type": "string"},
        "success_action_status": {"type": "string"},
        "file": {"type": "string", "format": "binary"},
    },
}


@router.get(
    "/api/v1/uploads",
    openapi_extra=openapi.operation(
        parameters=[
            openapi.query("action", "getPolicy", required=True, type="string", enum=["getPolicy"]),
            openapi.query("model", "The model the upload is for.", required=True),
        ]
    ),
)
async def get_policy(request: Request) -> dict[str, Any]:
    svc = services_of(request)
    key = await authenticate(request)
    if request.query_params.get("action") != "getPolicy":
        raise InvalidParameter("action must be getPolicy")
    svc.catalog.get(request.query_params.get("model"))
    data = svc.uploads.issue(key.id, public_base_url(request) + UPLOAD_HOST_PATH)
    return {"request_id": request_id_of(request), "data": data}


@router.post(UPLOAD_HOST_PATH, openapi_extra=openapi.operation(form=_UPLOAD_FORM, auth=False))
async def upload(request: Request) -> dict[str, Any]:
    """The OSS-style form post. The policy is checked from the fields that precede the file,
    before a byte of the file is kept; the body is capped as it streams; nothing is written
    until the whole form is in and authorised (api/upload_form.py)."""
    svc = services_of(request)
    limit = svc.uploads.max_bytes
    budget = limit + _FORM_OVERHEAD_BYTES
    too_large = InputTooLarge(f"Uploads are at most {limit // (1024 * 1024)} MB.")
    if declared_length(request) > budget:
        raise too_large
    authorised: list[tuple[UploadPolicy, str]] = []

    def authorise(fields: dict[str, str]) -> int:
        for name in ("policy", "Signature", "key"):
            if not fields.get(name):
                raise InvalidParameter(f"The upload form lacks {name} (before the file).")
            if "\x00" in fields[name]:  # no policy, signature or file name holds one
                raise InvalidParameter(f"{name} must not contain NUL.")
        policy = svc.uploads.verify(fields["policy"], fields["Signature"])
        authorised.append((policy, policy.object_key(fields["key"])))
        return min(policy.max_bytes, limit)

    parser = UploadFormParser(request.headers.get("content-type"), authorise)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > budget:
            raise too_large
        parser.feed(chunk)
    form = parser.finish()
    policy, object_key = authorised[0]
    if form.fields.get("key") != object_key:
        raise InvalidParameter("The upload form names its key twice.")
    forbid = form.fields.get("x-oss-forbid-overwrite", "").strip().lower() == "true"
    await run_in_threadpool(store_upload, svc.blobs, policy, object_key, form.file, forbid)
    return {"request_id": request_id_of(request)}
