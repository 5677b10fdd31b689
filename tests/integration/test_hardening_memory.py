"""Reference images keep the API process small: ten concurrent submissions with 4096x4096
references (a 68 KB PNG each, ~48 MB once decoded) are checked from the header, decoded a
bounded number at a time and stored shrunk, in a real `imagesynth serve --no-worker` process.

(The in-process topology, `imagesynth serve` with its worker, was measured the same way once,
after a warm-up task: ~700 MB with torch and the engine loaded, +60 MB at the peak of the ten
submissions, against +1.5 GB, all of it kept, before decoding was bounded. It takes ~40 s, too
long to run with every test.)"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from imagesynth.inputs.reference import STORED_MIN_SIDE
from tests.integration.conftest import SUBMIT_PATH, Launcher, Server
from tests.integration.local_server import api_home
from tests.integration.test_reference import RELAY_HOST, FileServer

CONCURRENT = 10
API_RSS_LIMIT_MB = 300


def big_reference() -> bytes:
    image = Image.new("RGB", (4096, 4096), (30, 90, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((300, 400, 2400, 2600), fill=(250, 200, 20))
    draw.ellipse((1700, 1600, 3900, 3800), fill=(200, 30, 60))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


@pytest.fixture(scope="module")
def relay() -> Iterator[FileServer]:
    png = big_reference()
    assert len(png) < 100_000
    server = FileServer(RELAY_HOST, {"/big.png": (200, {"Content-Type": "image/png"}, png)})
    yield server
    server.close()


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def submit_references(
    server: Server, relay: FileServer, count: int = CONCURRENT
) -> list[httpx.Response]:
    """`count` submissions at once, each with the 4096x4096 reference (one denoising step)."""
    body = {
        "model": "wanx-v1",
        "input": {"prompt": "a still life", "ref_img": f"{relay.url}/big.png"},
        "parameters": {"n": 1, "ref_strength": 0.5, "size": "720*1280", "steps": 1},
    }

    def one(_: int) -> httpx.Response:
        with server.client() as c:
            return c.post(SUBMIT_PATH, json=body, headers={"X-DashScope-Async": "enable"})

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def stored_reference_sizes(home: Path) -> list[tuple[int, int]]:
    sizes = []
    for path in (home / "files").glob("*/input/ref.png"):
        with Image.open(path) as image:
            sizes.append(image.size)
    return sizes


def test_api_only_process_stays_small(tmp_path: Path, relay: FileServer) -> None:
    launcher = Launcher(lambda: None)  # type: ignore[arg-type,return-value]
    try:
        server = launcher(
            home=api_home(tmp_path, fetch_allow_networks=f"{RELAY_HOST}/32"), worker=False
        )
        pid = server.proc.popen.pid
        before = memory_mb(pid)
        started = time.monotonic()
        replies = submit_references(server, relay)
        took = time.monotonic() - started
        after = memory_mb(pid)
    finally:
        launcher.stop_all()
    print(
        f"API-only: RSS before {before['VmRSS']:.0f} MB, peak {after['VmHWM']:.0f} MB, "
        f"after {after['VmRSS']:.0f} MB; {CONCURRENT} submissions in {took:.1f} s"
    )
    assert [r.status_code for r in replies] == [200] * CONCURRENT, replies[0].text
    assert after["VmHWM"] < API_RSS_LIMIT_MB, (before, after)
    sizes = stored_reference_sizes(tmp_path)
    assert len(sizes) == CONCURRENT
    assert all(min(size) == STORED_MIN_SIDE for size in sizes), sizes
