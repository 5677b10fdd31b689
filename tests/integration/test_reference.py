"""wanx-v1 reference images: by http(s) URL (fetched safely), local path and file:// (the SDK's
upload flow), and every refused fetch. Against one in-process service on a real port (the SDK
needs one), allowed to fetch from the test's relay host."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dashscope import ImageSynthesis
from PIL import Image, ImageDraw, ImageOps

from imagesynth.config import Settings
from tests.integration.api_client import ASYNC, SUBMIT_PATH
from tests.integration.images import fetch_png, max_abs_diff, mean_abs_diff
from tests.integration.inprocess import InProcessService, open_service
from tests.integration.test_errors import assert_error
from tests.integration.test_sdk import SAME

RELAY_HOST = "127.0.0.2"  # the one loopback address the test server may fetch from


def reference_image() -> Image.Image:
    """A picture with structure and colour, unlike the demo models' noise."""
    image = Image.new("RGB", (512, 512), (30, 90, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 60, 300, 330), fill=(250, 200, 20))
    draw.ellipse((220, 200, 480, 470), fill=(200, 30, 60))
    draw.polygon([(60, 480), (200, 360), (300, 500)], fill=(20, 180, 90))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class FileServer:
    """A loopback HTTP server that records every request it gets."""

    def __init__(self, host: str, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.hits: list[str] = []
        self.routes = routes
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                status, headers, body = server.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The fetcher may stop reading (a size cap): expected.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def target() -> Iterator[FileServer]:
    """What a malicious URL would try to reach: it must never be hit."""
    png = png_bytes(reference_image())
    server = FileServer("127.0.0.1", {"/ref.png": (200, {"Content-Type": "image/png"}, png)})
    yield server
    server.close()


@pytest.fixture(scope="module")
def relay(target: FileServer) -> Iterator[FileServer]:
    png = png_bytes(reference_image())
    small = png_bytes(Image.new("RGB", (100, 100), "red"))
    server = FileServer(
        RELAY_HOST,
        {
            "/ref.png": (200, {"Content-Type": "image/png"}, png),
            "/big.png": (200, {"Content-Type": "image/png"}, b"\0" * (11 * 1024 * 1024)),
            "/fake.png": (200, {"Content-Type": "image/png"}, b"just some text, not a PNG\n"),
            "/small.png": (200, {"Content-Type": "image/png"}, small),
            "/redirect": (302, {"Location": f"{target.url}/ref.png"}, b""),
            "/missing.png": (404, {}, b"gone"),
        },
    )
    yield server
    server.close()


@pytest.fixture(scope="module")
def http_server(make_settings: Callable[..., Settings]) -> Iterator[InProcessService]:
    """The module's service (and so `sdk`'s), allowed to fetch from the relay host."""
    settings = make_settings(fetch_allow_networks=f"{RELAY_HOST}/32")
    with open_service(settings, transport="http") as service:
        yield service


@pytest.fixture
def server(http_server: InProcessService) -> InProcessService:
    return http_server


def other_reference() -> Image.Image:
    return ImageOps.mirror(ImageOps.invert(reference_image()))


def _call(
    server: InProcessService, ref_img: str, seed: int = 13, size: str = "1024*1024", **kwargs: Any
) -> Image.Image:
    rsp = ImageSynthesis.call(
        model="wanx-v1",
        prompt="a still life",
        n=1,
        size=size,
        seed=seed,
        ref_img=ref_img,
        api_key=server.key,
        **kwargs,
    )
    assert rsp.status_code == 200 and rsp.output.task_status == "SUCCEEDED", rsp
    image = fetch_png(rsp.output.results[0].url)
    assert image.size == tuple(int(side) for side in size.split("*"))
    return image


def distance_to_reference(result: Image.Image) -> float:
    return mean_abs_diff(result, ImageOps.fit(reference_image(), result.size))


def test_repaint_from_url_follows_ref_strength(sdk: InProcessService, relay: FileServer) -> None:
    url = f"{relay.url}/ref.png"
    close = _call(sdk, url, ref_strength=1.0)
    loose = _call(sdk, url, ref_strength=0.0)
    assert distance_to_reference(close) < 0.6 * distance_to_reference(loose), (
        distance_to_reference(close),
        distance_to_reference(loose),
    )
    # At 1.0 the reference decides the image more than the seed does ...
    assert mean_abs_diff(close, _call(sdk, url, seed=14, ref_strength=1.0)) < 0.6 * (
        mean_abs_diff(loose, _call(sdk, url, seed=14, ref_strength=0.0))
    )
    # ... and another reference gives another image.
    relay.routes["/other.png"] = (200, {"Content-Type": "image/png"}, png_bytes(other_reference()))
    elsewhere = _call(sdk, f"{relay.url}/other.png", ref_strength=1.0)
    assert distance_to_reference(elsewhere) > 1.5 * distance_to_reference(close)


def test_local_path_and_file_url_go_through_the_upload_flow(
    sdk: InProcessService, relay: FileServer, tmp_path: Path
) -> None:
    path = tmp_path / "my reference.png"
    path.write_bytes(png_bytes(reference_image()))
    by_url = _call(sdk, f"{relay.url}/ref.png", ref_strength=0.8)
    by_path = _call(sdk, str(path), ref_strength=0.8)
    by_file_url = _call(sdk, path.as_uri(), ref_strength=0.8)
    # The same reference by three routes: the same image.
    assert max_abs_diff(by_url, by_path) <= SAME
    assert max_abs_diff(by_url, by_file_url) <= SAME


def test_refonly_differs_from_repaint(sdk: InProcessService, relay: FileServer) -> None:
    url = f"{relay.url}/ref.png"
    refonly = [_call(sdk, url, seed=s, ref_mode="refonly", ref_strength=1.0) for s in (13, 14)]
    repaint = _call(sdk, url, ref_mode="repaint", ref_strength=1.0)
    assert mean_abs_diff(refonly[0], repaint) > 1.0
    assert max_abs_diff(refonly[0], _call(sdk, url, ref_mode="refonly", ref_strength=1.0)) <= SAME
    # refonly leaves the seed more say than a repaint does: it takes the look, not the layout.
    repaint_14 = _call(sdk, url, seed=14, ref_mode="repaint", ref_strength=1.0)
    assert mean_abs_diff(*refonly) > mean_abs_diff(repaint, repaint_14)


def test_refonly_runs_through_the_ip_adapter(sdk: InProcessService, relay: FileServer) -> None:
    # The built-in wanx-v1 has the demo IP-Adapter (which path a task takes is checked in
    # tests/unit/test_engine.py): text to image at the requested size, steered by the
    # reference, so another reference with the same seed gives another image.
    relay.routes["/other.png"] = (200, {"Content-Type": "image/png"}, png_bytes(other_reference()))
    one, other = (
        _call(sdk, f"{relay.url}/{name}", size="720*1280", ref_mode="refonly", ref_strength=1.0)
        for name in ("ref.png", "other.png")
    )
    assert mean_abs_diff(one, other) > 2.0


def test_reference_parameters_are_validated(server: InProcessService, relay: FileServer) -> None:
    fetched_before = relay.hits.count("/ref.png")
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({"ref_img": f"{relay.url}/ref.png"}, {"ref_strength": 1.5}, "ref_strength"),
        ({"ref_img": f"{relay.url}/ref.png"}, {"ref_mode": "inpaint"}, "ref_mode"),
        ({"ref_img": 42}, {}, "input.ref_img"),
    ]
    with server.client() as c:
        for inputs, params, word in cases:
            body = {
                "model": "wanx-v1",
                "input": {"prompt": "x", **inputs},
                "parameters": {"n": 1, **params},
            }
            r = c.post(SUBMIT_PATH, json=body, headers=ASYNC)
            assert_error(r, 400, "InvalidParameter", word)
        body = {
            "model": "wan2.2-t2i-flash",
            "input": {"prompt": "x", "ref_img": f"{relay.url}/ref.png"},
            "parameters": {"n": 1},
        }
        r = c.post(SUBMIT_PATH, json=body, headers=ASYNC)
        assert_error(r, 400, "InvalidParameter", "ref_img")
    # Validation comes before any download.
    assert relay.hits.count("/ref.png") == fetched_before


def test_ref_image_spelling_is_accepted(server: InProcessService, relay: FileServer) -> None:
    task_id = server.submit(
        {
            "model": "wanx-v1",
            "input": {"prompt": "x", "ref_image": f"{relay.url}/ref.png"},
            "parameters": {"n": 1, "ref_strength": 1.0},
        }
    )
    done = server.wait(task_id)
    assert done["output"]["task_status"] == "SUCCEEDED"
    assert server.fetch_png(done["output"]["results"][0]["url"]).size == (1024, 1024)


def refused_cases(target: FileServer, relay: FileServer) -> list[tuple[str, int, str]]:
    port = target.url.rsplit(":", 1)[1]
    return [
        (f"http://127.0.0.1:{port}/ref.png", 400, "InvalidURL"),
        (f"http://[::1]:{port}/ref.png", 400, "InvalidURL"),
        ("http://169.254.169.254/latest/meta-data/", 400, "InvalidURL"),
        ("http://10.0.0.1/ref.png", 400, "InvalidURL"),
        (f"http://localhost:{port}/ref.png", 400, "InvalidURL"),
        (f"{relay.url}/redirect", 400, "InvalidURL"),
        ("ftp://example.com/ref.png", 400, "InvalidURL"),
        ("/etc/passwd", 400, "InvalidURL"),
        (f"{relay.url}/big.png", 413, "BadRequest.TooLarge"),
        (f"{relay.url}/fake.png", 400, "BadRequest.UnsupportedFileFormat"),
        (f"{relay.url}/small.png", 400, "InvalidParameter"),
        (f"{relay.url}/missing.png", 400, "InvalidParameter.FileDownload"),
    ]


def test_refused_fetches(server: InProcessService, target: FileServer, relay: FileServer) -> None:
    with server.client() as c:
        queued_before = c.get("/api/v1/tasks").json()["total"]
        for url, status, code in refused_cases(target, relay):
            body = {
                "model": "wanx-v1",
                "input": {"prompt": "x", "ref_img": url},
                "parameters": {"n": 1},
            }
            r = c.post(SUBMIT_PATH, json=body, headers=ASYNC)
            assert_error(r, status, code)
        # Nothing was queued for any of them.
        assert c.get("/api/v1/tasks").json()["total"] == queued_before
    assert target.hits == []
    assert "/redirect" in relay.hits  # the relay was asked; where it pointed, never


def test_uploads_are_private_to_their_key(server: InProcessService) -> None:
    other = server.create_key("other")
    with server.client() as c:
        policy = c.get("/api/v1/uploads", params={"action": "getPolicy", "model": "wanx-v1"})
        assert policy.status_code == 200, policy.text
        data = policy.json()["data"]
        form = {
            "OSSAccessKeyId": data["oss_access_key_id"],
            "Signature": data["signature"],
            "policy": data["policy"],
            "key": data["upload_dir"] + "/ref.png",
            "success_action_status": "200",
        }
    files = {"file": ("ref.png", png_bytes(reference_image()), "image/png")}
    with server.anonymous() as upload:  # the upload host takes the signed form, no API key
        host = data["upload_host"]
        assert upload.post(host, data=form, files=files).status_code == 200
        # A forged signature, or a key outside the policy's folder, is refused.
        forged = {**form, "Signature": "0" * 64}
        assert upload.post(host, data=forged, files=files).status_code == 403
        outside = {**form, "key": "imagesynth-uploads/elsewhere/ref.png"}
        assert upload.post(host, data=outside, files=files).status_code == 400

    oss_url = "oss://" + form["key"]
    body = {
        "model": "wanx-v1",
        "input": {"prompt": "x", "ref_img": oss_url},
        "parameters": {"n": 1, "ref_strength": 1.0},
    }
    headers = {"X-DashScope-Async": "enable", "X-DashScope-OssResourceResolve": "enable"}
    with server.client(other) as c:
        assert_error(c.post(SUBMIT_PATH, json=body, headers=headers), 400, "InvalidURL")
    with server.client() as c:
        without_header = c.post(SUBMIT_PATH, json=body, headers=ASYNC)
        assert_error(without_header, 400, "InvalidURL", "OssResourceResolve")
        r = c.post(SUBMIT_PATH, json=body, headers=headers)
    assert r.status_code == 200, r.text
    done = server.wait(r.json()["output"]["task_id"])
    assert done["output"]["task_status"] == "SUCCEEDED"
    assert server.fetch_png(done["output"]["results"][0]["url"]).size == (1024, 1024)
