"""The blob store port: where result images, stored reference images and uploads live.

Keys are `/`-separated names made by the service (`<task>/<attempt>/<file>`, `uploads/...`).
A store decides how a client reaches a blob (`url_for`): the local store answers a signed
`/files/...` URL served by the API; an object store can answer a presigned URL of its own.
Nothing outside storage/ sees a filesystem path.
"""

from __future__ import annotations

import re
from typing import Protocol

# Keys are made by the service, never by clients; the pattern still guards every path or
# object name built from one, so a forged key can never name a blob outside the store.
_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")
# Where the API serves blobs at its own signed URLs (api/routes_files.py).
FILES_ROUTE = "/files/"


class InvalidBlobKey(ValueError):
    """A key that does not name a blob (empty parts, '..', characters outside [A-Za-z0-9_.-])."""


def check_key(key: str) -> str:
    """`key` if it can name a blob, else InvalidBlobKey."""
    # fullmatch: match() with `$` would also take a trailing newline ('a/b\n').
    if not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise InvalidBlobKey(key)
    return key


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None:
        """Write atomically: a reader sees the whole blob or none."""
        ...

    def put_new(self, key: str, data: bytes) -> bool:
        """Write atomically unless a blob already exists under `key` (then leave it as it is);
        whether this call wrote it. Of several racing calls exactly one writes."""
        ...

    def read(self, key: str) -> bytes | None:
        """The blob's bytes, or None if there is none (or the key is not a valid key)."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every blob under `prefix` (a task id, or `<task>/<attempt>`)."""
        ...

    def expire(self, prefix: str, age_seconds: float) -> int:
        """Delete the blobs under `prefix` written more than `age_seconds` ago; how many."""
        ...

    def url_for(self, key: str, ttl_seconds: float) -> str:
        """Where a client downloads the blob for at least `ttl_seconds`: an absolute URL, or
        a path that the API prefixes with its public base URL."""
        ...
