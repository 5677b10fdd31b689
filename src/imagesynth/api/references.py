"""Where a request's reference image comes from: an http(s) URL fetched by the server (never
from private addresses), or an `oss://` upload of the same key (the SDK's upload flow, for
local paths and file:// URLs)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from imagesynth.accounts.models import ApiKey
from imagesynth.api.context import services_of
from imagesynth.errors import InvalidURL
from imagesynth.inputs.fetch import fetch
from imagesynth.inputs.uploads import OSS_SCHEME, owned_blob_key


def reference_loader(request: Request, key: ApiKey, url: str) -> Callable[[], bytes]:
    """A callable returning the image's bytes; checks that need no I/O happen now."""
    svc = services_of(request)
    if url.startswith(OSS_SCHEME):
        resolve = request.headers.get("x-dashscope-ossresourceresolve", "").lower() == "enable"
        if not resolve:
            raise InvalidURL("oss:// inputs need the header X-DashScope-OssResourceResolve: enable")
        blob_key = owned_blob_key(url, key.id)

        def load_upload() -> bytes:
            data = svc.blobs.read(blob_key)
            if data is None:
                raise InvalidURL("The oss:// URL does not name an upload of this API key.")
            return data

        return load_upload
    if url.startswith(("http://", "https://")):
        return lambda: fetch(url, svc.fetch_policy)
    raise InvalidURL("ref_img must be an http(s) URL or an oss:// upload (see the SDK's upload).")
