"""Synchronous paths (Qwen-Image multimodal-generation, wan2.2 sync_call), the asyncio SDK and
workspaces, through the official SDK."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from dashscope import ImageSynthesis, MultiModalConversation
from dashscope.aigc.image_synthesis import AioImageSynthesis
from dashscope.api_entities.aio_session import close_shared_aio_session

from tests.integration.conftest import Launcher, Server, sdk_pointed_at
from tests.integration.images import fetch_png
from tests.integration.test_errors import assert_error

MULTIMODAL = "/api/v1/services/aigc/multimodal-generation/generation"


def messages(text: str = "a poster that says hello") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def test_qwen_multimodal_call(sdk: Server) -> None:
    rsp = MultiModalConversation.call(
        model="qwen-image-plus",
        messages=messages(),
        size="1328*1328",
        seed=4,
        prompt_extend=False,
        watermark=False,
        negative_prompt="",
        api_key=sdk.key,
    )
    assert rsp.status_code == 200, rsp
    choice = rsp.output.choices[0]
    assert choice.finish_reason == "stop"
    (item,) = choice.message.content
    assert fetch_png(item["image"]).size == (1328, 1328)
    assert rsp.output.task_metric == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
    assert rsp.usage.image_count == 1
    assert (rsp.usage.width, rsp.usage.height) == (1328, 1328)


def test_multimodal_refuses_the_async_header(server: Server) -> None:
    body = {"model": "qwen-image", "input": {"messages": messages()}, "parameters": {}}
    with server.client() as c:
        r = c.post(MULTIMODAL, json=body, headers={"X-DashScope-Async": "enable"})
    assert_error(r, 403, "AccessDenied", "current user api does not support asynchronous calls")


@pytest.mark.parametrize(
    "msgs",
    [
        [],
        messages() * 2,
        [{"role": "system", "content": [{"text": "x"}]}],
        [{"role": "user", "content": [{"text": "x"}, {"text": "y"}]}],
        [{"role": "user", "content": [{"image": "http://example.invalid/a.png"}]}],
        [{"role": "user", "content": "x"}],
        [{"role": "user", "content": [{"text": 5}]}],
    ],
)
def test_multimodal_needs_one_user_message_with_one_text(server: Server, msgs: Any) -> None:
    body = {"model": "qwen-image", "input": {"messages": msgs}}
    with server.client() as c:
        assert_error(c.post(MULTIMODAL, json=body), 400, "InvalidParameter", "messages")


def test_multimodal_validates_like_everywhere(server: Server) -> None:
    with server.client() as c:
        r = c.post(
            MULTIMODAL,
            json={
                "model": "qwen-image",
                "input": {"messages": messages()},
                "parameters": {"size": "1024*1024"},
            },
        )
        assert_error(r, 400, "InvalidParameter", "size")
        r = c.post(MULTIMODAL, json={"model": "wanx-v1", "input": {"messages": messages()}})
        assert_error(r, 400, "InvalidParameter", "wanx-v1")
        r = c.post(MULTIMODAL, json={"model": "nope", "input": {"messages": messages()}})
        assert_error(r, 404, "ModelNotFound")


def test_wan22_sync_call(sdk: Server) -> None:
    rsp = ImageSynthesis.sync_call(
        model="wan2.2-t2i-flash", prompt="a kite", n=2, size="640*640", seed=9, api_key=sdk.key
    )
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "SUCCEEDED"
    assert [fetch_png(r.url).size for r in rsp.output.results] == [(640, 640)] * 2
    assert rsp.usage.image_count == 2


def test_asyncio_sdk(sdk: Server) -> None:
    async def run() -> Any:
        rsp = await AioImageSynthesis.call(
            model="wanx2.0-t2i-turbo", prompt="a boat", n=1, size="512*768", api_key=sdk.key
        )
        # The SDK keeps a shared aiohttp session per process; close it on this loop, as an
        # application shutting down would, rather than leave it to warn at interpreter exit.
        await close_shared_aio_session()
        return rsp

    rsp = asyncio.run(run())
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "SUCCEEDED"
    assert fetch_png(rsp.output.results[0].url).size == (512, 768)


def test_workspace_is_recorded_and_filters_the_list(start: Launcher) -> None:
    with sdk_pointed_at(start(worker=False)) as server:
        key = server.key
        in_a = ImageSynthesis.async_call(
            model="wanx-v1", prompt="x", n=1, workspace="ws-a", api_key=key
        ).output.task_id
        in_b = ImageSynthesis.async_call(
            model="wanx-v1", prompt="x", n=1, workspace="ws-b", api_key=key
        ).output.task_id
        listed_a = ImageSynthesis.list(workspace="ws-a", api_key=key).output["data"]
        assert [t["task_id"] for t in listed_a] == [in_a]
        assert listed_a[0]["workspace"] == "ws-a"
        everything = ImageSynthesis.list(api_key=key).output["data"]
        assert {t["task_id"] for t in everything} == {in_a, in_b}


SLOW = {"n": 1, "size": "1440*1440", "steps": 40}


def test_sync_request_waits_its_turn_in_the_queue(start: Launcher) -> None:
    server = start(worker=False)
    first = server.submit(
        {"model": "wan2.2-t2i-flash", "input": {"prompt": "first"}, "parameters": SLOW}
    )
    reply: dict[str, Any] = {}

    def sync_call() -> None:
        with server.client() as c:
            r = c.post(
                "/api/v1/services/aigc/text2image/image-synthesis",
                json={
                    "model": "wan2.2-t2i-flash",
                    "input": {"prompt": "second"},
                    "parameters": {"n": 1, "size": "512*512"},
                },
                timeout=180,
            )
        reply.update(r.json())

    caller = threading.Thread(target=sync_call)
    caller.start()
    time.sleep(0.5)  # the sync task is queued behind `first`
    start.worker(server.home)
    caller.join(timeout=180)
    assert reply["output"]["task_status"] == "SUCCEEDED", reply
    earlier = server.query(first)["output"]
    assert earlier["task_status"] == "SUCCEEDED"
    assert earlier["end_time"] <= reply["output"]["scheduled_time"]


def test_sync_caller_that_hangs_up_leaves_no_task_behind(start: Launcher) -> None:
    server = start(worker=False)
    with server.client() as c, pytest.raises(httpx.ReadTimeout):
        c.post(
            "/api/v1/services/aigc/text2image/image-synthesis",
            json={
                "model": "wan2.2-t2i-plus",
                "input": {"prompt": "abandoned"},
                "parameters": {"n": 1, "size": "512*512"},
            },
            timeout=1.0,
        )
    deadline = time.monotonic() + 10
    while True:
        with server.client() as c:
            tasks = c.get("/api/v1/tasks").json()["data"]
        if tasks and tasks[0]["status"] == "CANCELED":
            break
        assert time.monotonic() < deadline, tasks
        time.sleep(0.2)
    # A worker arriving later finds nothing to do for it.
    start.worker(server.home)
    time.sleep(2)
    with server.client() as c:
        assert c.get("/api/v1/tasks").json()["data"][0]["status"] == "CANCELED"
