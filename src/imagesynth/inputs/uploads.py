"""The SDK's temporary-upload flow, served by imagesynth itself.

`GET /api/v1/uploads?action=getPolicy` hands a key a signed, expiring policy naming an upload
folder of its own; the SDK posts the file to the upload host with that policy (no API key, as
with OSS), then sends `oss://<folder>/<name>` as the input. The policy is HMAC-signed with the
service's secret, so it can't be forged, widened to another folder, or used after it expires;
files land under the key's own prefix, so one key can never name another key's upload.

A policy is for one object. The SDK asks for it before it knows the file's name (getPolicy
carries only the model) and names the object `<folder>/<basename>` itself, so the policy
can't name the key in advance: the first upload under a policy binds it to that key, and the
policy refuses any other. It also says `x-oss-forbid-overwrite: true`, and means it: an object
once uploaded is never replaced (409 FileAlreadyExists), whatever the form says.
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

from imagesynth.errors import AccessDenied, InvalidParameter, InvalidURL, ObjectExists
from imagesynth.storage.blobs import BlobStore

OSS_SCHEME = "oss://"
UPLOAD_ROOT = "imagesynth-uploads"
UPLOAD_ROOT_BLOBS = "uploads"  # where uploads live in the blob store (maintenance expires it)


@dataclass(frozen=True)
class UploadPolicy:
    key_id: str
    upload_dir: str
    expires: int
    max_bytes: int
    forbid_overwrite: bool = True

    def object_key(self, key: str) -> str:
        """`key` if it names one object directly in this policy's folder."""
        name = key.removeprefix(self.upload_dir + "/")
        if name == key or not name or "/" in name:
            raise InvalidParameter("key must be <upload_dir>/<file name> from the policy.")
        return key


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
            "forbid_overwrite": True,
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
            forbid_overwrite=bool(body.get("forbid_overwrite", True)),
        )
        if parsed.expires < time.time():
            raise AccessDenied("The upload policy has expired.")
        return parsed


def store_upload(
    blobs: BlobStore, policy: UploadPolicy, oss_key: str, data: bytes, forbid_overwrite: bool
) -> None:
    """Store an authorised upload: the first object of its policy (which binds the policy to
    it), and never over an existing one when overwriting is forbidden."""
    claim = f"{UPLOAD_ROOT_BLOBS}/{policy.key_id}/policy-{policy.upload_dir.rsplit('/', 1)[-1]}"
    if not blobs.put_new(claim, oss_key.encode()) and blobs.read(claim) != oss_key.encode():
        raise AccessDenied("This upload policy is for one object; get a new policy per file.")
    blob_key = blob_key_for(oss_key)
    if forbid_overwrite or policy.forbid_overwrite:
        if not blobs.put_new(blob_key, data):
            raise ObjectExists()
    else:
        blobs.put(blob_key, data)


def blob_key_for(oss_key: str) -> str:
    """Where an uploaded object is stored: its owner's folder and a digest of its name, so a
    client-chosen file name never becomes a path."""
    parts = oss_key.split("/")
    if len(parts) < 4 or parts[0] != UPLOAD_ROOT:
        raise InvalidURL("The oss:// URL does not name an upload of this service.")
    digest = hashlib.sha256(oss_key.encode()).hexdigest()[:40]
    return f"{UPLOAD_ROOT_BLOBS}/{parts[1]}/{digest}"


def owned_blob_key(url: str, key_id: str) -> str:
    """The blob key of `oss://...` if it is an upload of key `key_id`; else InvalidURL (the
    same answer whether it belongs to another key or to nobody)."""
    oss_key = url.removeprefix(OSS_SCHEME)
    if not oss_key.startswith(f"{UPLOAD_ROOT}/{key_id}/"):
        raise InvalidURL("The oss:// URL does not name an upload of this API key.")
    return blob_key_for(oss_key)
