"""The SDK's temporary-upload flow, served by imagesynth itself.

`GET /api/v1/uploads?action=getPolicy` hands a key a signed, expiring policy naming an upload
folder of its own; the SDK posts the file to the upload host with that policy (no API key, as
with OSS), then sends `oss://<folder>/<name>` as the input. The policy is HMAC-signed with the
service's secret, so it can't be forged, widened to another folder, or used after it expires;
files land under the key's own prefix, so one key can never name another key's upload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from imagesynth.errors import AccessDenied, InvalidURL

OSS_SCHEME = "oss://"
UPLOAD_ROOT = "imagesynth-uploads"


@dataclass(frozen=True)
class UploadPolicy:
    key_id: str
    upload_dir: str
    expires: int
    max_bytes: int


class UploadSigner:
    def __init__(self, secret: bytes, ttl_seconds: int, max_bytes: int) -> None:
        self._secret = hashlib.sha256(b"uploads\n" + secret).digest()  # its own key
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes

    def _sign(self, policy: str) -> str:
        return hmac.new(self._secret, policy.encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, upload_host: str) -> dict[str, Any]:
        """The `data` of a getPolicy reply."""
        upload_dir = f"{UPLOAD_ROOT}/{key_id}/{secrets.token_hex(8)}"
        body = {
            "key_id": key_id,
            "upload_dir": upload_dir,
            "expires": int(time.time()) + self.ttl_seconds,
            "max_bytes": self.max_bytes,
        }
        policy = base64.b64encode(json.dumps(body).encode()).decode()
        return {
            "policy": policy,
            "signature": self._sign(policy),
            "upload_dir": upload_dir,
            "upload_host": upload_host,
            "oss_access_key_id": key_id,
            "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true",
            "expire_in_seconds": self.ttl_seconds,
            "max_file_size_mb": self.max_bytes // (1024 * 1024),
            "capacity_limit_mb": self.max_bytes // (1024 * 1024),
        }

    def verify(self, policy: str, signature: str) -> UploadPolicy:
        if not signature.isascii() or not hmac.compare_digest(self._sign(policy), signature):
            raise AccessDenied("The upload policy signature does not match.")
        body = json.loads(base64.b64decode(policy))
        parsed = UploadPolicy(
            key_id=str(body["key_id"]),
            upload_dir=str(body["upload_dir"]),
            expires=int(body["expires"]),
            max_bytes=int(body["max_bytes"]),
        )
        if parsed.expires < time.time():
            raise AccessDenied("The upload policy has expired.")
        return parsed


def blob_key_for(oss_key: str) -> str:
    """Where an uploaded object is stored: its owner's folder and a digest of its name, so a
    client-chosen file name never becomes a path."""
    parts = oss_key.split("/")
    if len(parts) < 4 or parts[0] != UPLOAD_ROOT:
        raise InvalidURL("The oss:// URL does not name an upload of this service.")
    digest = hashlib.sha256(oss_key.encode()).hexdigest()[:40]
    return f"uploads/{parts[1]}/{digest}"


def owned_blob_key(url: str, key_id: str) -> str:
    """The blob key of `oss://...` if it is an upload of key `key_id`; else InvalidURL (the
    same answer whether it belongs to another key or to nobody)."""
    oss_key = url.removeprefix(OSS_SCHEME)
    if not oss_key.startswith(f"{UPLOAD_ROOT}/{key_id}/"):
        raise InvalidURL("The oss:// URL does not name an upload of this API key.")
    return blob_key_for(oss_key)
