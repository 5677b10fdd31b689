"""Signed result URLs, the signing secret on disk, and the local blob store's key guard."""

from __future__ import annotations

import math
import stat
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from imagesynth.errors import SignatureInvalid
from imagesynth.storage.local import InvalidBlobKey, LocalBlobStore
from imagesynth.storage.signing import UrlSigner, load_or_create_secret

SECRET = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)
PATH = "/files/3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b/1/0.png"
TTL = 3600
# Substitutes tried at each position: ASCII look-alikes, other digits and hex letters, and
# non-ASCII characters that some parsers read as digits.
SUBSTITUTES = "0159aAfFzZ/.-_%?&= \n\x00０１９²é"


def split(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query, strict_parsing=True)
    assert set(query) == {"Expires", "Signature"}
    return parts.path, query["Expires"][0], query["Signature"][0]


def variants(text: str) -> list[str]:
    """Every string that differs from text in exactly one character."""
    return [
        text[:i] + c + text[i + 1 :] for i in range(len(text)) for c in SUBSTITUTES if c != text[i]
    ]


@pytest.fixture
def signer() -> UrlSigner:
    return UrlSigner(SECRET, TTL)


def test_signed_url_verifies(signer: UrlSigner) -> None:
    now = time.time()
    path, expires, signature = split(signer.sign(PATH, now=now))

    assert path == PATH
    assert int(expires) == math.ceil(now + TTL)  # never shorter than the TTL
    assert len(signature) == 64
    signer.verify(path, expires, signature)  # raises if refused


def test_signature_depends_on_the_secret(signer: UrlSigner) -> None:
    path, expires, signature = split(signer.sign(PATH))

    with pytest.raises(SignatureInvalid):
        UrlSigner(SECRET[:-1] + b"\x00", TTL).verify(path, expires, signature)


def test_every_one_character_change_of_the_path_is_refused(signer: UrlSigner) -> None:
    path, expires, signature = split(signer.sign(PATH))

    changed = [*variants(path), path + "x", path[:-1], path.upper()]
    for bad in changed:
        with pytest.raises(SignatureInvalid, match="does not match"):
            signer.verify(bad, expires, signature)


def test_every_one_character_change_of_expires_is_refused(signer: UrlSigner) -> None:
    path, expires, signature = split(signer.sign(PATH))

    changed = [*variants(expires), "0" + expires, expires + "0", expires[:-1], "+" + expires]
    for bad in changed:
        with pytest.raises(SignatureInvalid):
            signer.verify(path, bad, signature)


def test_every_one_character_change_of_the_signature_is_refused(signer: UrlSigner) -> None:
    path, expires, signature = split(signer.sign(PATH))

    changed = [*variants(signature), signature.upper(), signature[:-1], signature + "0"]
    for bad in changed:
        with pytest.raises(SignatureInvalid):
            signer.verify(path, expires, bad)


@pytest.mark.parametrize(
    ("expires", "signature"), [(None, "ab"), ("123", None), ("", "ab"), ("123", "")]
)
def test_unsigned_url_is_refused(
    signer: UrlSigner, expires: str | None, signature: str | None
) -> None:
    with pytest.raises(SignatureInvalid, match="not signed"):
        signer.verify(PATH, expires, signature)


def test_expired_url_is_refused(signer: UrlSigner) -> None:
    path, expires, signature = split(signer.sign(PATH, now=time.time() - TTL - 2))

    with pytest.raises(SignatureInvalid, match="expired"):
        signer.verify(path, expires, signature)


def test_url_is_valid_until_it_expires() -> None:
    signer = UrlSigner(SECRET, ttl_seconds=2)
    path, expires, signature = split(signer.sign(PATH, now=time.time() - 1))

    signer.verify(path, expires, signature)  # about a second left


# -- the secret ------------------------------------------------------------------------------


def test_secret_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "home" / "url-signing.key"

    first = load_or_create_secret(path)

    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert load_or_create_secret(tmp_path / "other.key") != first
    assert sorted(p.name for p in path.parent.iterdir()) == ["url-signing.key"]  # no temp files


def test_secret_keeps_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "url-signing.key"
    path.write_text("ab" * 32 + "\n")

    assert load_or_create_secret(path) == b"\xab" * 32


def test_processes_racing_to_create_the_secret_agree(tmp_path: Path) -> None:
    path = tmp_path / "url-signing.key"
    start = threading.Barrier(8)
    secrets: list[bytes] = []

    def load() -> None:
        start.wait()
        secrets.append(load_or_create_secret(path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert len(secrets) == 8 and len(set(secrets)) == 1
    assert bytes.fromhex(path.read_text()) == secrets[0]


# -- blob store ------------------------------------------------------------------------------


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "files")


def test_blob_put_then_path(blobs: LocalBlobStore) -> None:
    blobs.put("task-1/1/0.png", b"\x89PNG first")
    blobs.put("task-1/1/0.png", b"\x89PNG second")  # replaces

    path = blobs.path("task-1/1/0.png")
    assert path == blobs.root / "task-1" / "1" / "0.png"
    assert path.read_bytes() == b"\x89PNG second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["0.png"]  # no temp files
    assert blobs.path("task-1/1/1.png") is None
    assert blobs.path("task-1/1") is None  # a folder is not a blob


def test_blob_delete_prefix_removes_one_tasks_files(blobs: LocalBlobStore) -> None:
    for key in ("task-1/1/0.png", "task-1/2/0.png", "task-10/1/0.png", "task-2/1/0.png"):
        blobs.put(key, b"png")

    blobs.delete_prefix("task-1")
    blobs.delete_prefix("task-3")  # nothing there: no error

    assert not (blobs.root / "task-1").exists()
    assert blobs.path("task-1/1/0.png") is None
    assert blobs.path("task-10/1/0.png") is not None
    assert blobs.path("task-2/1/0.png") is not None


def test_blob_delete_prefix_of_one_attempt(blobs: LocalBlobStore) -> None:
    blobs.put("task-1/1/0.png", b"lost lease")
    blobs.put("task-1/2/0.png", b"rerun")

    blobs.delete_prefix("task-1/1")

    assert blobs.path("task-1/1/0.png") is None
    assert blobs.path("task-1/2/0.png") is not None


BAD_KEYS = [
    "../x",
    "/etc/passwd",
    "a/../../b",
    "a/..",
    "..",
    ".",
    "./a",
    "a//b",
    "a/",
    "",
    "a\\..\\b",
    "a/b\n",
    "a\n/../../b",
    "a/..\n",
    "~/x",
    "a b",
    "a\x00",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_blob_store_refuses_keys_that_could_leave_its_root(
    blobs: LocalBlobStore, tmp_path: Path, key: str
) -> None:
    (tmp_path / "x").write_bytes(b"outside")

    with pytest.raises(InvalidBlobKey):
        blobs.put(key, b"evil")
    with pytest.raises(InvalidBlobKey):
        blobs.delete_prefix(key)
    assert blobs.path(key) is None

    assert (tmp_path / "x").read_bytes() == b"outside"
    assert [p for p in blobs.root.rglob("*") if p.is_file()] == []


def test_only_the_signed_spelling_of_a_request_verifies(signer: UrlSigner) -> None:
    url = signer.sign(PATH)
    path, query = url.split("?")
    assert signer.verify_request(path, query) == PATH
    expires, signature = (pair.split("=", 1)[1] for pair in query.split("&"))
    for raw_path in (
        PATH.replace("0.png", "0%2Epng"),
        PATH.replace("0.png", "0%2epng"),
        PATH.replace("/1/", "%2F1/"),
        PATH.replace("/files/", "/%66iles/"),
        PATH + "%ff",
    ):
        with pytest.raises(SignatureInvalid, match="form it was signed in"):
            signer.verify_request(raw_path, query)
    for raw_query in (
        f"Expires={expires}&Expires={expires}&Signature={signature}",
        f"Expires={expires}&Signature={signature}&Signature={signature}",
        f"Expires={expires}&Signature={signature}&Expires=9{expires}",
    ):
        with pytest.raises(SignatureInvalid, match="repeats"):
            signer.verify_request(path, raw_query)
    for raw_query in (
        f"%45xpires={expires}&Signature={signature}",
        f"Expires={expires}&Signatur%65={signature}",
        f"Expires=%3{expires[0]}{expires[1:]}&Signature={signature}",
        f"Expires={expires}&Signature=+{signature}",
    ):
        with pytest.raises(SignatureInvalid, match="form it was signed in"):
            signer.verify_request(path, raw_query)
