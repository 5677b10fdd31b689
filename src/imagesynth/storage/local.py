"""Result files on the local disk, under IMAGESYNTH_HOME/files/<task_id>/<attempt>/<i>.png."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

# Keys are made by the service, never by clients; the pattern still guards every path built
# from one, so a forged key can never name a file outside the store.
_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


class InvalidBlobKey(ValueError):
    pass


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        # fullmatch: match() with `$` would also take a trailing newline ('a/b\n').
        if not _KEY.fullmatch(key) or ".." in key.split("/"):
            raise InvalidBlobKey(key)
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        """Write atomically: a reader sees the whole file or none."""
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

    def path(self, key: str) -> Path | None:
        """The file for key, or None if there is none."""
        try:
            path = self._path(key)
        except InvalidBlobKey:
            return None
        return path if path.is_file() else None

    def delete_prefix(self, prefix: str) -> None:
        """Delete every file of one task (prefix = task id)."""
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def delete_older_than(self, prefix: str, age_seconds: float) -> int:
        """Delete files under prefix last written more than age_seconds ago; returns how many."""
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
