"""Blobs in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, ...), under `s3://bucket/prefix`.

The client is boto3's, configured the standard AWS way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, or ~/.aws/config), which boto3 reads itself. Clients reach a
blob either at a presigned GET URL of the bucket (the default: the images never pass through
the API) or, with urls="proxy", at the API's own signed `/files/...` URL, which the API serves
by reading the blob through this store (for buckets clients cannot reach).
"""

from __future__ import annotations

import math
import mimetypes
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imagesynth.errors import StorageUnavailable
from imagesynth.storage.blobs import FILES_ROUTE, InvalidBlobKey, check_key
from imagesynth.storage.signing import UrlSigner

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

UrlMode = Literal["presigned", "proxy"]

# SigV4 presigned URLs are valid for at most 7 days (S3 refuses a longer X-Amz-Expires).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# DeleteObjects takes at most 1000 keys, and a ListObjectsV2 page holds at most 1000.
_DELETE_BATCH = 1000
# A conditional write racing another on the same key may be answered 409 (AWS: "retry");
# the retry then sees the winner's object and gets 412.
_CONFLICT_RETRIES = 5


def parse_storage_url(url: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix'); the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StorageUnavailable(
            f"IMAGESYNTH_STORAGE_URL must look like s3://bucket/prefix, not {url!r}."
        )
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except InvalidBlobKey:
            raise StorageUnavailable(
                f"The prefix {prefix!r} in IMAGESYNTH_STORAGE_URL is not a valid key prefix "
                "(letters, digits, '_', '-', '.' and '/')."
            ) from None
    return parts.netloc, prefix


class S3BlobStore:
    """storage.blobs.BlobStore in one S3 bucket, shared by every process that names it."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        urls: UrlMode = "presigned",
        signer: UrlSigner | None = None,
    ) -> None:
        if urls == "proxy" and signer is None:
            raise ValueError("proxy URLs need the API's URL signer")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.urls = urls
        self.signer = signer

    @classmethod
    def open(
        cls, url: str, *, urls: UrlMode = "presigned", signer: UrlSigner | None = None
    ) -> S3BlobStore:
        """The store for IMAGESYNTH_STORAGE_URL, checked once: StorageUnavailable (naming
        the bucket, the endpoint and the error) if the bucket cannot be used."""
        bucket, prefix = parse_storage_url(url)
        config = Config(
            signature_version="s3v4",  # presigned URLs with an expiry the server enforces
            connect_timeout=10,
            retries={"mode": "standard"},
        )
        try:
            # A session of its own: boto3's default one keeps the credentials it first read.
            client = boto3.session.Session().client("s3", config=config)
        except (BotoCoreError, ValueError) as exc:  # ValueError: a malformed endpoint URL
            raise StorageUnavailable(f"Cannot build an S3 client: {exc}") from None
        try:
            client.head_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError) as exc:
            endpoint = client.meta.endpoint_url
            raise StorageUnavailable(
                f"S3 bucket {bucket!r} at {endpoint} cannot be used: {_describe(exc)}"
            ) from None
        return cls(client, bucket, prefix, urls=urls, signer=signer)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        # A PutObject is atomic: readers see the old object or the whole new one.
        self.client.put_object(
            Bucket=self.bucket, Key=self._name(key), Body=data, ContentType=_content_type(key)
        )

    def put_new(self, key: str, data: bytes) -> bool:
        # If-None-Match: * makes the server refuse (412) a write over an existing object, so
        # of racing writers exactly one wins (AWS S3 since 2024, SeaweedFS, MinIO). A server
        # that ignores the header would let the last writer win: use one that honours it.
        name = self._name(key)
        for attempt in range(_CONFLICT_RETRIES):
            if attempt:
                time.sleep(0.05 * attempt)  # let the conflicting write finish
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=name,
                    Body=data,
                    ContentType=_content_type(key),
                    IfNoneMatch="*",
                )
                return True
            except ClientError as exc:
                status = _status(exc)
                if status == 412:
                    return False
                if status != 409:
                    raise
        return False  # still conflicting: another writer holds the key

    def read(self, key: str) -> bytes | None:
        try:
            name = self._name(key)
        except InvalidBlobKey:
            return None
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return response["Body"].read()

    def _objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(object name, last-modified Unix time) of every blob under `prefix`/."""
        # The trailing '/' keeps 'task-1' from taking 'task-10/...' (as a folder would).
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._name(prefix) + "/"
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["LastModified"].timestamp()

    def _delete(self, names: list[str]) -> None:
        for start in range(0, len(names), _DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": n} for n in names[start : start + _DELETE_BATCH]
            ]
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            # A missing object is no error (another process's maintenance got there first);
            # anything else reported per key would otherwise pass silently.
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise RuntimeError(
                    f"S3 could not delete {len(errors)} object(s) in {self.bucket!r}, e.g. "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
                )

    def delete_prefix(self, prefix: str) -> None:
        self._delete([name for name, _ in self._objects(prefix)])

    def expire(self, prefix: str, age_seconds: float) -> int:
        # LastModified is the server's clock: ages are off by any skew between the two.
        cutoff = time.time() - age_seconds
        old = [name for name, modified in self._objects(prefix) if modified < cutoff]
        self._delete(old)
        return len(old)

    def url_for(self, key: str, ttl_seconds: float) -> str:
        """A presigned GET URL valid for `ttl_seconds`, but at most 7 days (S3's limit for
        SigV4 presigned URLs: a longer TTL is clamped, see README), or in proxy mode the
        API's signed /files/ path, valid for the whole TTL."""
        name = self._name(key)  # never sign a URL for a key that cannot name a blob
        if self.urls == "proxy":
            assert self.signer is not None  # checked in __init__
            return self.signer.sign(FILES_ROUTE + key, ttl_seconds=ttl_seconds)
        expires = min(math.ceil(ttl_seconds), MAX_PRESIGN_SECONDS)
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=expires
        )


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _describe(exc: BotoCoreError | ClientError) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if _status(exc) == 404:
            return f"it does not exist ({code} {message})".strip()
        if _status(exc) == 403:
            return f"access denied: check the credentials ({code} {message})".strip()
        return f"{code} {message}".strip()
    return str(exc)


def _content_type(key: str) -> str:
    # Presigned downloads get this from the bucket, so results come back as image/png.
    return mimetypes.guess_type(key)[0] or "application/octet-stream"
