"""Signed, expiring URLs for result files: HMAC-SHA256 over the path and the expiry time.

The signature covers the exact path and Expires value, so changing either (or the signature
itself) makes the URL invalid; comparison is constant-time. A URL is accepted only in the one
spelling sign() writes (`verify_request`): no percent-escape a signed path doesn't need (`%2E`
for `.`, `%2F` for `/`), no escaped or repeated Expires or Signature, so that one link can't
be passed off under another spelling (to a cache, a log filter, a deny list).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote, unquote

from imagesynth.domain import parse_digits
from imagesynth.errors import SignatureInvalid


def load_or_create_secret(path: Path) -> bytes:
    """The service's URL-signing key, created once (0600) and kept across restarts so URLs
    stay valid, and shared by every process using the same IMAGESYNTH_HOME."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    try:
        # link() refuses to replace: if another process won the race, use its key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


SIGNATURE_PARAMS = ("Expires", "Signature")


def canonical_path(raw_path: str) -> str:
    """The path a request names, if `raw_path` (as sent, still percent-encoded) is its one
    canonical spelling: escapes exactly where a character needs one, as quote() writes them."""
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise SignatureInvalid("The URL is not in the form it was signed in.") from None
    if quote(path) != raw_path:
        raise SignatureInvalid("The URL is not in the form it was signed in.")
    return path


def signature_params(raw_query: str) -> dict[str, str]:
    """Expires and Signature from a raw query string, each at most once and unescaped (the
    only way sign() writes them); other parameters are not signed and are ignored."""
    found: dict[str, str] = {}
    for pair in raw_query.split("&"):
        raw_name, _, raw_value = pair.partition("=")
        name = unquote(raw_name.replace("+", " "))
        if name not in SIGNATURE_PARAMS:
            continue
        if raw_name != name or "%" in raw_value or "+" in raw_value:
            raise SignatureInvalid("The URL is not in the form it was signed in.")
        if name in found:
            raise SignatureInvalid(f"The URL repeats {name}.")
        found[name] = raw_value
    return found


class UrlSigner:
    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def _signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, path: str, now: float | None = None, ttl_seconds: float | None = None) -> str:
        """'/files/a/b.png' -> '/files/a/b.png?Expires=...&Signature=...', valid for
        `ttl_seconds` (default: the signer's TTL)."""
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        # Rounded up: a link is never valid for less than the TTL.
        expires = math.ceil((time.time() if now is None else now) + ttl)
        return f"{path}?Expires={expires}&Signature={self._signature(path, expires)}"

    def verify_request(self, raw_path: str, raw_query: str) -> str:
        """Check a request for a signed URL as it arrived (path still percent-encoded, query
        string unparsed); the path it names."""
        path = canonical_path(raw_path)
        params = signature_params(raw_query)
        self.verify(path, params.get("Expires"), params.get("Signature"))
        return path

    def verify(self, path: str, expires: str | None, signature: str | None) -> None:
        if not expires or not signature:
            raise SignatureInvalid("The URL is not signed.")
        try:
            when = parse_digits(expires)
        except ValueError:
            raise SignatureInvalid("The URL is not signed.") from None
        # Only the exact text sign() wrote: int() also takes '017…'.
        # compare_digest() raises TypeError on non-ASCII str, so refuse that first.
        if (
            expires != str(when)
            or not signature.isascii()
            or not hmac.compare_digest(self._signature(path, when), signature)
        ):
            raise SignatureInvalid("The request signature does not match.")
        if when < time.time():
            raise SignatureInvalid("Request has expired.")
