"""Synchronous paths (Qwen-Image multimodal-generation, wan2.2 sync_call), the asyncio SDK and
workspaces, through the official SDK; against in-process services."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from dashscope import ImageSynthesis, MultiModalConversation
from dashscope.aigc.image_synthesis import AioImageSynthesis
from dashscope.api_entities.aio_session import close_shared_aio_session

from tests.integration.api_client import SUBMIT_PATH
from tests.integration.images import fetch_png
from tests.integration.inprocess import InProcessService
from tests.integration.test_errors import assert_error

MULTIMODAL = "/api/v1/services/aigc/multimodal-generation/generation"


def messages(text: str = "a poster that says hello") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def test_qwen_multimodal_call(sdk: InProcessService) -> None:
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


def test_multimodal_refuses_the_async_header(server: InProcessService) -> None:
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
def test_multimodal_needs_one_user_message_with_one_text(
    server: InProcessService, msgs: Any
) -> None:
    body = {"model": "qwen-image", "input": {"messages": msgs}}
    with server.client() as c:
        assert_error(c.post(MULTIMODAL, json=body), 400, "InvalidParameter", "messages")


def test_multimodal_validates_like_everywhere(server: InProcessService) -> None:
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


def test_wan22_sync_call(sdk: InProcessService) -> None:
    rsp = ImageSynthesis.sync_call(
        model="wan2.2-t2i-flash", prompt="a kite", n=2, size="640*640", seed=9, api_key=sdk.key
    )
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "SUCCEEDED"
    assert [fetch_png(r.url).size for r in rsp.output.results] == [(640, 640)] * 2
    assert rsp.usage.image_count == 2


def test_asyncio_sdk(sdk: InProcessService) -> None:
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


def test_workspace_is_recorded_and_filters_the_list(idle_sdk: InProcessService) -> None:
    key = idle_sdk.key
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


def test_sync_request_waits_its_turn_in_the_queue(
    start_service: Callable[..., InProcessService],
) -> None:
    server = start_service(workers=0)
    first = server.submit(
        {"model": "wan2.2-t2i-flash", "input": {"prompt": "first"}, "parameters": SLOW}
    )
    reply: dict[str, Any] = {}

    def sync_call() -> None:
        with server.client() as c:
            r = c.post(
                SUBMIT_PATH,
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
    # The sync task is queued behind `first` before any worker is there.
    deadline = time.monotonic() + 30
    while len(server.tasks()) < 2:
        assert time.monotonic() < deadline, server.tasks()
        time.sleep(0.05)
    server.start_worker()
    caller.join(timeout=180)
    assert reply["output"]["task_status"] == "SUCCEEDED", reply
    earlier = server.wait(first)["output"]
    assert earlier["task_status"] == "SUCCEEDED"
    # It ran after `first`. (It may end first: the pipelined worker generates it while
    # `first`'s big image is still being labelled and stored.)
    assert earlier["scheduled_time"] < reply["output"]["scheduled_time"]


def test_sync_caller_that_hangs_up_leaves_no_task_behind(
    start_service: Callable[..., InProcessService],
) -> None:
    # A real connection, so that the caller can hang up.
    server = start_service(workers=0, transport="http")
    with server.client() as c, pytest.raises(httpx.ReadTimeout):
        c.post(
            SUBMIT_PATH,
            json={
                "model": "wan2.2-t2i-plus",
                "input": {"prompt": "abandoned"},
                "parameters": {"n": 1, "size": "512*512"},
            },
            timeout=1.0,
        )
    deadline = time.monotonic() + 10
    while True:
        tasks = server.tasks()
        if tasks and tasks[0]["status"] == "CANCELED":
            break
        assert time.monotonic() < deadline, tasks
        time.sleep(0.2)
    (abandoned,) = tasks
    # A worker arriving later finds nothing to do for it: it runs the next task, and the
    # abandoned one stays CANCELED, never started, with no result.
    server.start_worker()
    later = server.wait(
        server.submit(
            {
                "model": "wan2.2-t2i-plus",
                "input": {"prompt": "wanted"},
                "parameters": {"n": 1, "size": "512*512", "steps": 1},
            }
        )
    )
    assert later["output"]["task_status"] == "SUCCEEDED"
    gone = server.query(abandoned["task_id"])["output"]
    assert gone["task_status"] == "CANCELED", gone
    assert "scheduled_time" not in gone and "results" not in gone, gone
