"""The `imagesynth` command as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from dashscope import ImageSynthesis
from PIL import Image

from imagesynth.runtime import Runtime
from tests.integration.api_client import ASYNC, SUBMIT_PATH
from tests.integration.conftest import (
    BIN,
    Home,
    Launcher,
    clean_environment,
    free_port,
    sdk_at,
)
from tests.integration.inprocess import InProcessService, open_service
from tests.unit.tiny_lm import build_tiny_lm

FLASH = "wan2.2-t2i-flash"  # 0.14 per image


def generate_env(server: InProcessService) -> dict[str, str]:
    return {
        **clean_environment(),
        "IMAGESYNTH_BASE_URL": server.api,
        "IMAGESYNTH_API_KEY": server.key,
    }


def test_generate_saves_pngs(http_server: InProcessService, tmp_path: Any) -> None:
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
        env=generate_env(http_server),
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


def test_generate_reports_errors(http_server: InProcessService, tmp_path: Any) -> None:
    result = subprocess.run(
        [str(BIN), "generate", "x", "--size", "1*1", "-o", str(tmp_path)],
        env=generate_env(http_server),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "InvalidParameter" in result.stderr and "size" in result.stderr


def test_make_demo_names_a_loadable_folder_per_family(demo_weights: Path) -> None:
    # The build itself is the session fixture's (tests/conftest.py, unit-tested in
    # test_engine.py); here the command finds those folders current and names them.
    out = subprocess.run(
        [str(BIN), "models", "make-demo", str(demo_weights)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    built = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert sorted(built) == ["qwen-image", "stable-diffusion", "wan", "z-image"]
    for family, folder in built.items():
        assert Path(folder) == demo_weights / family
        index = json.loads((Path(folder) / "model_index.json").read_text())
        assert index["_class_name"].endswith("Pipeline"), (family, index)


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
    assert "prompt_extend unavailable" in out  # no rewriter configured


def test_models_list_names_the_local_rewriter(
    make_home: Callable[..., Home], tmp_path: Path
) -> None:
    lm = build_tiny_lm(tmp_path / "tiny-lm", "a lighthouse")
    out = make_home(rewriter_path=str(lm)).cli("models", "list").stdout
    assert f"prompt_extend via local model {lm}" in out, out


def test_keys_usage_and_admin_token_act_on_a_running_service(
    make_home: Callable[..., Home],
) -> None:
    """keys create / set / revoke / list / show, usage and admin-token on the database of a
    running service (in the test process, on the same home)."""
    home = make_home()
    with open_service(home.settings) as server:
        secret = home.cli(
            "keys", "create", "--name", "bob", "--monthly-cap", "0.10",
            "-m", FLASH, "--free-quota", "1", "--rps", "50",
        ).stdout.strip()  # fmt: skip

        def submit() -> Any:
            body = {"model": FLASH, "input": {"prompt": "x"}, "parameters": {"n": 2, "steps": 1}}
            with server.client(secret) as c:
                return c.post(SUBMIT_PATH, json=body, headers=ASYNC)

        first = submit()
        assert first.status_code == 200, first.text
        done = server.wait(first.json()["output"]["task_id"], key=secret)
        assert done["output"]["task_status"] == "SUCCEEDED"

        # Two images: one free, one at 0.14, which reaches the cap of 0.10.
        (row,) = json.loads(home.cli("usage", "--json", "--key", "bob", "--model", FLASH).stdout)
        assert (row["calls"], row["succeeded"], row["images"], row["free_images"]) == (1, 1, 2, 1)
        assert (row["amount"], row["free_images_left"]) == ("0.14", 0)
        capped = submit()
        assert capped.status_code == 429 and capped.json()["code"] == "Throttling.AllocationQuota"
        changed = json.loads(home.cli("keys", "set", "bob", "--monthly-cap", "none").stdout)
        assert changed["monthly_cap"] is None and changed["overrides"][FLASH]["rps"] == 50
        assert submit().status_code == 200

        # admin-token prints the credential the running service's admin API takes.
        token = home.cli("admin-token").stdout.strip()
        with server.anonymous() as c:
            listed = c.get("/admin/v1/keys", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200 and "bob" in [k["name"] for k in listed.json()["keys"]]

        assert "revoked" in home.cli("keys", "revoke", "bob").stdout
        refused = submit()
        assert refused.status_code == 401 and refused.json()["code"] == "InvalidApiKey"
        listing = home.cli("keys", "list").stdout
        assert re.search(r"\bbob\s+revoked\b", listing), listing
        shown = json.loads(home.cli("keys", "show", "bob").stdout)
        assert shown["status"] == "revoked" and shown["last_used_at"] is not None
        assert shown["models"][FLASH]["free_images_left"] == 0


def test_keys_are_stored_hashed(make_home: Callable[..., Home]) -> None:
    home = make_home()
    secret = home.cli("keys", "create", "--name", "alice").stdout.strip()
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
        console = f"http://127.0.0.1:{port}/"
        assert f"Web console: open {console} and paste the key above." in banner
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        page = httpx.get(console)
        assert page.status_code == 200 and 'data-testid="api-key"' in page.text
        # The printed key works with the SDK at once.
        with sdk_at(f"http://127.0.0.1:{port}/api/v1"):
            rsp = ImageSynthesis.call(
                model="wan2.2-t2i-flash", prompt="hello", n=1, size="512*512", api_key=key
            )
        assert rsp.status_code == 200 and rsp.output.task_status == "SUCCEEDED"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_worker_help_lists_the_operations_options() -> None:
    out = subprocess.run(
        [str(BIN), "worker", "--help"],
        env={**clean_environment(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--device" in out
    assert "--metrics-port" in out


def test_worker_serves_its_metrics_and_joins_the_workers_table(
    start: Launcher, make_home: Callable[..., Home]
) -> None:
    home = make_home()
    port = free_port()
    proc = start.worker(home, "--metrics-port", str(port), "--device", "cpu")
    deadline = time.monotonic() + 120
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.alive() and time.monotonic() < deadline, proc.output()
        time.sleep(0.2)
    assert "imagesynth_pipelines_loaded 0.0" in r.text
    assert "imagesynth_queue_wait_seconds" in r.text
    runtime = Runtime.open(home.settings)
    try:
        deadline = time.monotonic() + 60
        while runtime.stores.workers.worker_count(home.settings.lease_seconds) != 1:
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.2)
    finally:
        runtime.stores.close()
    proc.stop()
    runtime = Runtime.open(home.settings)
    try:
        assert runtime.stores.workers.worker_count(3600) == 0  # a clean stop leaves
    finally:
        runtime.stores.close()
