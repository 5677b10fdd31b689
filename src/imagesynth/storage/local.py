"""Blobs on the local disk, under IMAGESYNTH_HOME/files/<key>, reached by clients at signed,
expiring `/files/<key>` URLs that the API serves (api/routes_files.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from imagesynth.storage.blobs import FILES_ROUTE, InvalidBlobKey, check_key
from imagesynth.storage.signing import UrlSigner

__all__ = ["FILES_ROUTE", "LocalBlobStore"]


class LocalBlobStore:
    """storage.blobs.BlobStore on one machine's disk (shared by every process of one home)."""

    def __init__(self, root: Path, signer: UrlSigner | None = None) -> None:
        self.root = root
        self.signer = signer
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_new(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # link() never replaces: the whole file appears under its name, or nothing does.
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def path(self, key: str) -> Path | None:
        """The file for key, or None if there is none (this store's own detail: the port
        hands out bytes and URLs, never paths)."""
        try:
            path = self._path(key)
        except InvalidBlobKey:
            return None
        return path if path.is_file() else None

    def read(self, key: str) -> bytes | None:
        path = self.path(key)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None  # deleted (expired, or a lost lease's output) since the check

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def expire(self, prefix: str, age_seconds: float) -> int:
        cutoff = time.time() - age_seconds
        removed = 0
        for path in self._path(prefix).rglob("*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass  # another process's maintenance pass got there first
        return removed

    def url_for(self, key: str, ttl_seconds: float) -> str:
        self._path(key)  # never sign a URL for a key that cannot name a blob
        if self.signer is None:
            raise RuntimeError("this LocalBlobStore was built without a URL signer")
        return self.signer.sign(FILES_ROUTE + key, ttl_seconds=ttl_seconds)
