"""The `imagesynth` command as a user runs it."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import dashscope
import httpx
from dashscope import ImageSynthesis
from PIL import Image

from tests.integration.conftest import BIN, Home, Server, free_port


def test_generate_saves_pngs(server: Server, tmp_path: Any) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            str(BIN),
            "generate",
            "a red fox",
            "--model",
            "wan2.2-t2i-flash",
            "--size",
            "640*512",
            "-n",
            "2",
            "--seed",
            "3",
            "-o",
            str(out),
        ],
        env={
            **server.home.env,
            "IMAGESYNTH_BASE_URL": server.api,
            "IMAGESYNTH_API_KEY": server.key,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == 2
    assert [Image.open(f).size for f in files] == [(640, 512), (640, 512)]
    assert "step" in result.stderr  # the progress bar
    assert "2 image(s)" in result.stderr


def test_generate_reports_errors(server: Server, tmp_path: Any) -> None:
    result = subprocess.run(
        [str(BIN), "generate", "x", "--size", "1*1", "-o", str(tmp_path)],
        env={
            **server.home.env,
            "IMAGESYNTH_BASE_URL": server.api,
            "IMAGESYNTH_API_KEY": server.key,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "InvalidParameter" in result.stderr and "size" in result.stderr


def test_models_list_says_demo(make_home: Callable[..., Home]) -> None:
    out = make_home().cli("models", "list").stdout
    for name in (
        "qwen-image",
        "qwen-image-plus",
        "wan2.2-t2i-plus",
        "wan2.2-t2i-flash",
        "wanx2.1-t2i-plus",
        "wanx2.1-t2i-turbo",
        "wanx2.0-t2i-turbo",
        "wanx-v1",
    ):
        assert re.search(rf"^{re.escape(name)}\s+\S+\s+DEMO", out, re.M), out
    assert "noise" in out


def test_keys_are_stored_hashed(make_home: Callable[..., Home]) -> None:
    home = make_home()
    secret = home.create_key("alice")
    assert re.fullmatch(r"sk-[0-9a-f]{48}", secret)
    assert secret.encode() not in (home.path / "imagesynth.db").read_bytes()
    listing = home.cli("keys", "list").stdout
    assert "alice" in listing and secret not in listing


def test_first_start_creates_a_key_and_prints_a_snippet(
    make_home: Callable[..., Home],
) -> None:
    home = make_home()
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)],
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        key = None
        while key is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            found = re.search(r"\bsk-[0-9a-f]{48}\b", line)
            key = found.group(0) if found else None
        assert key, "".join(lines)
        while "keys create" not in line:
            line = proc.stdout.readline()
            lines.append(line)
        banner = "".join(lines)
        assert "dashscope.base_http_api_url" in banner and f"127.0.0.1:{port}" in banner
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        # The printed key works with the SDK at once.
        saved = dashscope.base_http_api_url
        dashscope.base_http_api_url = f"http://127.0.0.1:{port}/api/v1"
        try:
            rsp = ImageSynthesis.call(
                model="wan2.2-t2i-flash", prompt="hello", n=1, size="512*512", api_key=key
            )
        finally:
            dashscope.base_http_api_url = saved
        assert rsp.status_code == 200 and rsp.output.task_status == "SUCCEEDED"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
