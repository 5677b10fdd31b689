"""No way around the guards, over real HTTP: a signed file URL has one accepted spelling, and
reference URLs that are not ASCII or that hide a private IPv4 address in IPv6 are refused with
400 InvalidURL before any connection is made."""

from __future__ import annotations

import http.client
import io
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.integration.conftest import SUBMIT_PATH
from tests.integration.local_server import LocalApi, local_api
from tests.unit.test_fetch_guard import Listener

BLOB = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/1/0.png"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    with local_api(tmp_path_factory.mktemp("home")) as running:
        yield running


def _get(api: LocalApi, target: str) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (no client-side normalisation)."""
    parts = urlsplit(api.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def signed(api: LocalApi) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    api.runtime.blobs.put(BLOB, buf.getvalue())
    return api.runtime.blobs.url_for(BLOB, 600)


def test_a_signed_url_has_one_spelling(api: LocalApi, signed: str) -> None:
    path, _, query = signed.partition("?")
    expires, signature = (pair.split("=", 1)[1] for pair in query.split("&"))
    assert _get(api, signed)[0] == 200
    assert _get(api, f"{signed}&x-oss-process=none")[0] == 200  # unsigned extras: ignored
    respelled = [
        path.replace("0.png", "0%2Epng") + "?" + query,
        path.replace("0.png", "0%2epng") + "?" + query,
        path.replace("/1/", "%2F1/") + "?" + query,
        path.replace("/0.png", "/%30.png") + "?" + query,
        f"{path}?Expires={expires}&Expires={expires}&Signature={signature}",
        f"{path}?Expires={expires}&Signature={signature}&Expires={int(expires) + 9}",
        f"{path}?Expires={int(expires) + 9}&Expires={expires}&Signature={signature}",
        f"{path}?Expires={expires}&Signature={signature}&Signature={signature}",
        f"{path}?%45xpires={expires}&Signature={signature}",
        f"{path}?Expires=%3{expires[0]}{expires[1:]}&Signature={signature}",
        f"{path}?Expires=+{expires}&Signature={signature}",
    ]
    for target in respelled:
        status, body = _get(api, target)
        assert status == 403, target
        assert b'"code":"AccessDenied"' in body, (target, body)


def _submit_ref(api: LocalApi, url: str) -> tuple[int, str]:
    body = {
        "model": "wanx-v1",
        "input": {"prompt": "x", "ref_img": url},
        "parameters": {"n": 1, "ref_strength": 0.5},
    }
    with api.client() as c:
        r = c.post(SUBMIT_PATH, json=body, headers={"X-DashScope-Async": "enable"})
    return r.status_code, str(r.json().get("code"))


def test_non_ascii_and_embedded_ipv4_reference_urls_are_invalid(api: LocalApi) -> None:
    listener = Listener()
    try:
        port = listener.port
        for url in (
            f"http://127.0.0.1:{port}/猫.png",
            f"http://１２７．０．０．１:{port}/ref.png",
            f"http://①②⑦.0.0.1:{port}/ref.png",
            f"http://[::7f00:1]:{port}/ref.png",
            f"http://[64:ff9b::7f00:1]:{port}/ref.png",
            f"http://[2002:7f00:1::1]:{port}/ref.png",
            f"http://[::ffff:127.0.0.1]:{port}/ref.png",
        ):
            assert _submit_ref(api, url) == (400, "InvalidURL"), url
        assert listener.accepted == 0
    finally:
        listener.close()
    with api.client() as c:
        assert c.get("/api/v1/tasks").json()["total"] == 0  # nothing was queued
