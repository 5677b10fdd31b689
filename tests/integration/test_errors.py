"""Every class of bad input gets the DashScope error shape with the right status and code.

Against the module's in-process service (over ASGI), and for the SDK one on a real port."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from dashscope import ImageSynthesis
from dashscope.common.error import InvalidTask

from tests.integration.api_client import ASYNC, SUBMIT_PATH
from tests.integration.inprocess import InProcessService


def good(**parameters: Any) -> dict[str, Any]:
    return {
        "model": "wan2.2-t2i-flash",
        "input": {"prompt": "a cat"},
        "parameters": {"n": 1, "size": "512*512", **parameters},
    }


def assert_error(r: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"request_id", "code", "message"}, body
    assert body["code"] == code, body
    assert len(body["request_id"]) == 36
    for word in words:
        assert word in body["message"], body
    return dict(body)


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({**good(), "model": "no-such-model"}, "ModelNotFound", ()),
        (good(size="100*100"), "InvalidParameter", ("size", "[512, 1440]")),
        (good(size="1440*1441"), "InvalidParameter", ("size",)),
        (good(size="big"), "InvalidParameter", ("size",)),
        (good(n=0), "InvalidParameter", ("n", "[1, 4]")),
        (good(n=5), "InvalidParameter", ("n",)),
        (good(n="2"), "InvalidParameter", ("parameters.n",)),
        (good(seed=-1), "InvalidParameter", ("seed", "2147483647")),
        (good(seed=2147483648), "InvalidParameter", ("seed",)),
        (good(seed=1.5), "InvalidParameter", ("parameters.seed",)),
        (good(steps=0), "InvalidParameter", ("steps",)),
        (good(steps=10_000), "InvalidParameter", ("steps",)),
        (good(guidance=-3), "InvalidParameter", ("guidance",)),
        (good(prompt_extend="yes"), "InvalidParameter", ("prompt_extend",)),
        ({**good(), "input": {}}, "InvalidParameter", ("input.prompt",)),
        ({**good(), "input": {"prompt": "   "}}, "InvalidParameter", ("input.prompt",)),
        ({**good(), "input": {"prompt": 42}}, "InvalidParameter", ("input.prompt",)),
        ({"model": "wanx-v1", "parameters": {}}, "BadRequest.EmptyInput", ()),
        ({"input": {"prompt": "x"}}, "BadRequest.EmptyModel", ()),
        (
            {"model": "qwen-image", "input": {"prompt": "x"}, "parameters": {"n": 2}},
            "InvalidParameter",
            ("n must be 1",),
        ),
        (
            {"model": "qwen-image", "input": {"prompt": "x"}, "parameters": {"size": "1024*1024"}},
            "InvalidParameter",
            ("1328*1328",),
        ),
        (
            {"model": "wanx-v1", "input": {"prompt": "x"}, "parameters": {"size": "512*512"}},
            "InvalidParameter",
            ("720*1280",),
        ),
        (
            {"model": "wanx-v1", "input": {"prompt": "x"}, "parameters": {"style": "<cubism>"}},
            "InvalidParameter",
            ("style",),
        ),
    ],
)
def test_invalid_submissions(
    server: InProcessService, body: dict[str, Any], code: str, words: tuple[str, ...]
) -> None:
    with server.client() as c:
        r = c.post(SUBMIT_PATH, json=body, headers=ASYNC)
    status = 404 if code == "ModelNotFound" else 400
    assert_error(r, status, code, *words)


def test_malformed_and_non_object_json(server: InProcessService) -> None:
    with server.client() as c:
        for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
            r = c.post(
                SUBMIT_PATH,
                content=raw,
                headers={**ASYNC, "Content-Type": "application/json"},
            )
            assert_error(r, 400, "InvalidParameter", "JSON")


def test_body_size_is_bounded(server: InProcessService) -> None:
    with server.client() as c:
        r = c.post(
            SUBMIT_PATH,
            json={**good(), "input": {"prompt": "x" * (2 << 20)}},
            headers=ASYNC,
        )
    assert_error(r, 413, "BadRequest.TooLarge")


def test_missing_async_header(server: InProcessService) -> None:
    with server.client() as c:
        r = c.post(SUBMIT_PATH, json={**good(), "model": "wanx2.1-t2i-turbo"})
    assert_error(r, 403, "AccessDenied", "current user api does not support synchronous calls")


def test_wan22_runs_synchronously_without_the_header(server: InProcessService) -> None:
    with server.client() as c:
        r = c.post(SUBMIT_PATH, json=good())
    assert r.status_code == 200, r.text
    output = r.json()["output"]
    assert output["task_status"] == "SUCCEEDED"
    assert len(output["results"]) == 1
    assert r.json()["usage"] == {"image_count": 1}
    assert server.fetch_png(output["results"][0]["url"]).size == (512, 512)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "No API-key provided."),
        ({"Authorization": "Bearer sk-wrong"}, "Invalid API-key provided."),
        ({"Authorization": "sk-no-scheme"}, "Invalid API-key provided."),
        ({"Authorization": "Bearer"}, "Invalid API-key provided."),
    ],
)
def test_missing_or_wrong_key(
    server: InProcessService, headers: dict[str, str], message: str
) -> None:
    with server.anonymous() as c:
        for r in (
            c.post(SUBMIT_PATH, json=good(), headers={**ASYNC, **headers}),
            c.get("/api/v1/tasks/abc", headers=headers),
            c.get("/api/v1/tasks", headers=headers),
            c.post("/api/v1/tasks/abc/cancel", headers=headers),
        ):
            body = assert_error(r, 401, "InvalidApiKey")
            assert body["message"] == message


def test_unknown_route_and_method(server: InProcessService) -> None:
    with server.client() as c:
        # DashScope's gateway answers both "url error" (400 InvalidParameter); our own
        # paths answer as HTTP does.
        assert_error(c.get("/api/v1/no/such/route"), 400, "InvalidParameter", "url error")
        assert_error(c.delete("/api/v1/tasks/abc"), 400, "InvalidParameter", "use GET")
        assert_error(c.get("/admin/v1/nothing"), 404, "NotFound")


def test_list_query_errors(server: InProcessService) -> None:
    with server.client() as c:
        assert_error(c.get("/api/v1/tasks?page_size=0"), 400, "InvalidParameter", "page_size")
        assert_error(c.get("/api/v1/tasks?page_no=x"), 400, "InvalidParameter", "page_no")
        assert_error(c.get("/api/v1/tasks?start_time=2025"), 400, "InvalidParameter", "start")
        assert_error(
            c.get("/api/v1/tasks?start_time=20250101000000&end_time=20250103000000"),
            400,
            "InvalidParameter",
            "24 h",
        )
        assert_error(c.get("/api/v1/tasks?status=DONE"), 400, "InvalidParameter", "status")


def test_unknown_task_reads_unknown(server: InProcessService) -> None:
    reply = server.query("00000000-0000-0000-0000-000000000000")
    assert reply["output"] == {
        "task_id": "00000000-0000-0000-0000-000000000000",
        "task_status": "UNKNOWN",
    }
    with server.client() as c:
        assert_error(c.post("/api/v1/tasks/nope/cancel"), 400, "UnsupportedOperation")


def test_sdk_sees_codes(idle_sdk: InProcessService) -> None:
    rsp = ImageSynthesis.async_call(
        model="wan2.2-t2i-flash", prompt="x", size="9*9", api_key=idle_sdk.key
    )
    assert (rsp.status_code, rsp.code) == (400, "InvalidParameter")
    rsp = ImageSynthesis.async_call(model="nope", prompt="x", api_key=idle_sdk.key)
    assert (rsp.status_code, rsp.code) == (404, "ModelNotFound")
    rsp = ImageSynthesis.async_call(model="wanx-v1", prompt="x", api_key="sk-bad")
    assert (rsp.status_code, rsp.code) == (401, "InvalidApiKey")
    # call() raises on a failed submit, exactly as against the hosted API.
    with pytest.raises(InvalidTask):
        ImageSynthesis.call(model="wanx-v1", prompt="x", n=9, api_key=idle_sdk.key)
