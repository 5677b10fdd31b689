"""The BlobStore port's behaviour, the same for every store: the local disk and an S3 bucket
(a real `weed mini`, tests/s3_server.py), plus what only the S3 store does: presigned URLs the
server checks, proxy URLs, and a clear error for a bucket it cannot use."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from imagesynth.config import Settings
from imagesynth.errors import StorageUnavailable
from imagesynth.runtime import open_blobs
from imagesynth.storage import s3
from imagesynth.storage.blobs import BlobStore, InvalidBlobKey
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.s3 import MAX_PRESIGN_SECONDS, S3BlobStore, UrlMode
from imagesynth.storage.signing import UrlSigner
from tests.s3_server import S3Server

PNG = b"\x89PNG\r\n\x1a\n-not-really-an-image"
SIGNER = UrlSigner(b"k" * 32, ttl_seconds=60)


@pytest.fixture
def open_s3(s3_env: S3Server) -> Callable[..., S3BlobStore]:
    """Factory: an S3BlobStore on a fresh bucket, under a prefix, opened as the runtime does."""

    def make(urls: UrlMode = "presigned") -> S3BlobStore:
        return S3BlobStore.open(f"s3://{s3_env.new_bucket()}/deploy/a", urls=urls, signer=SIGNER)

    return make


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "files", SIGNER)
    open_s3: Callable[..., S3BlobStore] = request.getfixturevalue("open_s3")
    return open_s3()


def test_put_then_read_and_overwrite(store: BlobStore) -> None:
    assert store.read("task-1/1/0.png") is None
    store.put("task-1/1/0.png", PNG)
    assert store.read("task-1/1/0.png") == PNG
    store.put("task-1/1/0.png", b"second")
    assert store.read("task-1/1/0.png") == b"second"


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "a//b", "a/b\n", "/a", "a b"])
def test_invalid_keys_name_no_blob(store: BlobStore, key: str) -> None:
    assert store.read(key) is None
    with pytest.raises(InvalidBlobKey):
        store.put(key, PNG)
    with pytest.raises(InvalidBlobKey):
        store.url_for(key, 60)


def test_put_new_keeps_the_first_blob(store: BlobStore) -> None:
    assert store.put_new("uploads/claim", b"first")
    assert not store.put_new("uploads/claim", b"second")
    assert store.read("uploads/claim") == b"first"


def test_put_new_racing_threads_exactly_one_writes(store: BlobStore) -> None:
    start = threading.Barrier(8)
    won: list[int] = []

    def write(i: int) -> None:
        start.wait()
        if store.put_new("uploads/race", f"writer {i}".encode()):
            won.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert store.read("uploads/race") == f"writer {won[0]}".encode()


def test_delete_prefix_takes_only_that_folder(store: BlobStore) -> None:
    for key in ["task-1/1/0.png", "task-1/2/0.png", "task-1/2/1.png", "task-10/1/0.png"]:
        store.put(key, PNG)
    store.delete_prefix("task-1/1")
    assert store.read("task-1/1/0.png") is None
    assert store.read("task-1/2/0.png") == PNG
    store.delete_prefix("task-1")
    assert store.read("task-1/2/0.png") is None
    assert store.read("task-1/2/1.png") is None
    assert store.read("task-10/1/0.png") == PNG  # 'task-1' is a folder, not a name prefix
    store.delete_prefix("task-nothing")  # nothing there: no error


def test_expire_deletes_only_old_blobs(store: BlobStore) -> None:
    store.put("uploads/old", PNG)
    store.put("elsewhere/old", PNG)
    # S3 keeps LastModified to the second: 2.5 s apart, a 1.5 s age tells them apart.
    time.sleep(2.5)
    store.put("uploads/new", PNG)
    assert store.expire("uploads", 1.5) == 1
    assert store.read("uploads/old") is None
    assert store.read("uploads/new") == PNG
    assert store.read("elsewhere/old") == PNG


# -- S3 only ---------------------------------------------------------------------------------


def test_delete_prefix_in_batches(
    open_s3: Callable[..., S3BlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches stand in for S3's 1000-key DeleteObjects limit.
    monkeypatch.setattr(s3, "_DELETE_BATCH", 2)
    store = open_s3()
    for i in range(5):
        store.put(f"task-1/1/{i}.png", PNG)
    store.delete_prefix("task-1")
    assert [store.read(f"task-1/1/{i}.png") for i in range(5)] == [None] * 5


def test_objects_live_under_the_prefix(open_s3: Callable[..., S3BlobStore]) -> None:
    store = open_s3()
    store.put("task-1/1/0.png", PNG)
    body = store.client.get_object(Bucket=store.bucket, Key="deploy/a/task-1/1/0.png")["Body"]
    assert body.read() == PNG


def test_presigned_url_downloads_the_png(open_s3: Callable[..., S3BlobStore]) -> None:
    store = open_s3()
    store.put("task-1/1/0.png", PNG)
    url = store.url_for("task-1/1/0.png", 600)
    assert url.startswith(store.client.meta.endpoint_url)
    rsp = httpx.get(url)
    assert rsp.status_code == 200
    assert rsp.content == PNG
    assert rsp.headers["content-type"] == "image/png"


def test_tampered_presigned_url_is_refused(open_s3: Callable[..., S3BlobStore]) -> None:
    store = open_s3()
    store.put("task-1/1/0.png", PNG)
    store.put("task-1/1/1.png", PNG)
    url = store.url_for("task-1/1/0.png", 600)
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert httpx.get(url.replace(signature, flipped)).status_code == 403
    # The signature covers the key: it opens no other blob.
    assert httpx.get(url.replace("0.png", "1.png")).status_code == 403
    assert httpx.get(url.split("?")[0]).status_code == 403  # unsigned


def test_expired_presigned_url_is_refused(open_s3: Callable[..., S3BlobStore]) -> None:
    store = open_s3()
    store.put("task-1/1/0.png", PNG)
    url = store.url_for("task-1/1/0.png", 1)
    assert httpx.get(url).status_code == 200
    time.sleep(2.1)
    assert httpx.get(url).status_code == 403


def test_presigned_ttl_is_clamped_to_seven_days(open_s3: Callable[..., S3BlobStore]) -> None:
    url = open_s3().url_for("task-1/1/0.png", 30 * 86_400)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [str(MAX_PRESIGN_SECONDS)]


def test_proxy_urls_are_the_apis_signed_files_urls(open_s3: Callable[..., S3BlobStore]) -> None:
    store = open_s3(urls="proxy")
    url = store.url_for("task-1/1/0.png", 30 * 86_400)  # no 7-day cap: the API signs it
    path, _, query = url.partition("?")
    assert SIGNER.verify_request(path, query) == "/files/task-1/1/0.png"
    assert int(parse_qs(query)["Expires"][0]) > time.time() + 29 * 86_400


def test_missing_bucket_stops_opening_with_a_clear_error(s3_env: S3Server) -> None:
    with pytest.raises(StorageUnavailable) as caught:
        S3BlobStore.open("s3://no-such-bucket/x")
    message = caught.value.message
    assert "'no-such-bucket'" in message
    assert s3_env.endpoint in message
    assert "does not exist" in message


def test_wrong_credentials_stop_opening(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_env.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageUnavailable, match=rf"'{bucket}' at {s3_env.endpoint}"):
        S3BlobStore.open(f"s3://{bucket}")


@pytest.mark.parametrize("url", ["bucket/x", "s3://", "s3:///x", "s3://b/a/../c", "gs://b/x"])
def test_malformed_storage_urls_are_refused(url: str) -> None:
    with pytest.raises(StorageUnavailable, match="IMAGESYNTH_STORAGE_URL"):
        s3.parse_storage_url(url)


def test_runtime_opens_the_configured_store(
    s3_env: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(open_blobs(Settings(home=tmp_path, storage_url=None), SIGNER), LocalBlobStore)
    bucket = s3_env.new_bucket()
    settings = Settings(home=tmp_path, storage_url=f"s3://{bucket}/p", url_ttl_seconds=8 * 86_400)
    with caplog.at_level(logging.WARNING):
        blobs = open_blobs(settings, SIGNER)
    assert isinstance(blobs, S3BlobStore)
    assert (blobs.bucket, blobs.prefix, blobs.urls) == (bucket, "p", "presigned")
    assert "links will expire after 7 days" in caplog.text
