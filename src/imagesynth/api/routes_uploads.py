"""The SDK's upload flow: a policy from the API, then a form post to the upload host (here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from imagesynth.api import openapi
from imagesynth.api.context import (
    authenticate,
    declared_length,
    public_base_url,
    request_id_of,
    services_of,
)
from imagesynth.errors import InputTooLarge, InvalidParameter
from imagesynth.inputs.uploads import blob_key_for

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
    svc = services_of(request)
    limit = svc.uploads.max_bytes
    if declared_length(request) > limit + _FORM_OVERHEAD_BYTES:
        raise InputTooLarge(f"Uploads are at most {limit // (1024 * 1024)} MB.")
    try:
        form = await request.form(max_files=1, max_fields=20, max_part_size=limit + 1)
    except MultiPartException as exc:
        raise InvalidParameter(f"Malformed upload form: {exc.message}") from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise InvalidParameter("The upload form has no file.")
    for name in ("policy", "Signature", "key"):
        if not fields.get(name):
            raise InvalidParameter(f"The upload form lacks {name}.")
        if "\x00" in fields[name]:  # no policy, signature or file name holds one
            raise InvalidParameter(f"{name} must not contain NUL.")
    policy = svc.uploads.verify(fields["policy"], fields["Signature"])
    object_key = fields["key"]
    name = object_key.removeprefix(policy.upload_dir + "/")
    if name == object_key or not name or "/" in name:
        raise InvalidParameter("key must be <upload_dir>/<file name> from the policy.")
    data = await file.read(limit + 1)
    if len(data) > policy.max_bytes:
        raise InputTooLarge(f"Uploads are at most {policy.max_bytes // (1024 * 1024)} MB.")
    svc.blobs.put(blob_key_for(object_key), data)
    return {"request_id": request_id_of(request)}
