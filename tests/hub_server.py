"""A tiny Hugging Face hub on 127.0.0.1: the endpoints huggingface_hub 2.x calls to download
a model repository, laid out as the hub serves them, so that `imagesynth models pull` runs the
real download code with HF_ENDPOINT pointed here.

- GET  /api/models/{repo}[/revision/{rev}]   model info: sha, siblings (sizes, LFS metadata)
- GET  /api/models/{repo}/tree/{rev}          the recursive file listing
- HEAD /{repo}/resolve/{rev}/{path}           X-Repo-Commit, ETag, Content-Length
- GET  /{repo}/resolve/{rev}/{path}           the bytes, with Range support (206)

Every file request is logged (method, path, Range, bytes sent, counted as they go), and a file
can stop at an offset until released, so that a test can kill a download halfway. A gated
repository answers file requests 401 GatedRepo, as the hub does without an accepted licence;
an unknown one 404 RepoNotFound.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt")
CHUNK = 16 * 1024


@dataclass
class RepoFiles:
    sha: str
    files: dict[str, bytes]
    gated: bool = False

    @classmethod
    def from_folder(cls, folder: Path, gated: bool = False) -> RepoFiles:
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        sha = hashlib.sha1(b"".join(hashlib.sha1(b).digest() for b in files.values())).hexdigest()
        return cls(sha=sha, files=files, gated=gated)


@dataclass
class Request:
    method: str
    path: str  # the file's path in its repository
    range: str | None
    sent: int = 0  # body bytes written so far


@dataclass
class FakeHub:
    repos: dict[str, RepoFiles] = field(default_factory=dict)
    # file path -> byte offset where its download stops until `resume` is set (or 30 s pass)
    stall: dict[str, int] = field(default_factory=dict)
    resume: threading.Event = field(default_factory=threading.Event)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def file_requests(self, path: str, method: str = "GET") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path and r.method == method]

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sibling(path: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {"rfilename": path, "size": len(data), "blobId": _etag(data)[:40]}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"sha256": _etag(data), "size": len(data), "pointerSize": 134}
    return entry


def _tree_entry(path: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "file",
        "path": path,
        "size": len(data),
        "oid": _etag(data)[:40],
    }
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": _etag(data), "size": len(data), "pointerSize": 134}
    return entry


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _json(self, status: int, body: object, error_code: str | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if error_code:
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", str(body))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _repo(self, parts: list[str]) -> tuple[str, RepoFiles | None]:
            repo = "/".join(parts[:2])
            return repo, hub.repos.get(repo)

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"]:
                self._api(parts[2:])
            else:
                self._resolve(parts, body=True)

        def do_HEAD(self) -> None:
            parts = unquote(urlsplit(self.path).path).strip("/").split("/")
            self._resolve(parts, body=False)

        def _api(self, parts: list[str]) -> None:
            repo, files = self._repo(parts)
            if files is None:
                self._json(404, {"error": "Repository not found"}, "RepoNotFound")
                return
            rest = parts[2:]
            if rest[:1] == ["tree"]:
                self._json(200, [_tree_entry(p, d) for p, d in files.files.items()])
                return
            self._json(
                200,
                {
                    "id": repo,
                    "modelId": repo,
                    "sha": files.sha,
                    "private": False,
                    "gated": "manual" if files.gated else False,
                    "siblings": [_sibling(p, d) for p, d in files.files.items()],
                },
            )

        def _resolve(self, parts: list[str], *, body: bool) -> None:
            repo, files = self._repo(parts)
            if files is None:
                self._json(404, {"error": "Repository not found"}, "RepoNotFound")
                return
            if len(parts) < 5 or parts[2] != "resolve":
                self._json(404, {"error": "Entry not found"}, "EntryNotFound")
                return
            if files.gated:
                self._json(401, {"error": f"Access to model {repo} is restricted"}, "GatedRepo")
                return
            name = "/".join(parts[4:])
            data = files.files.get(name)
            if data is None:
                self._json(404, {"error": "Entry not found"}, "EntryNotFound")
                return
            asked = self.headers.get("Range")
            request = Request("GET" if body else "HEAD", name, asked)
            with hub.lock:
                hub.requests.append(request)
            start = 0
            if asked and asked.startswith("bytes="):
                start = int(asked[len("bytes=") :].split("-")[0])
            payload = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(payload) if body else len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{_etag(data)}"')
            self.send_header("X-Repo-Commit", files.sha)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            stall_at = hub.stall.get(name)
            try:
                for offset in range(0, len(payload), CHUNK):
                    if stall_at is not None and start + offset >= stall_at:
                        hub.resume.wait(30)
                        stall_at = None
                    chunk = payload[offset : offset + CHUNK]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    with hub.lock:
                        request.sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


@contextmanager
def fake_hub(repos: dict[str, RepoFiles]) -> Iterator[FakeHub]:
    """The hub serving `repos` on a free port until the block ends."""
    hub = FakeHub(repos=dict(repos))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
