"""The official dashscope SDK, unchanged, end to end against `imagesynth serve` run as a user
runs it: a subprocess on a port (one with its worker, one without, shared by the module)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from dashscope import ImageSynthesis

from tests.integration.conftest import Home, Launcher, Server, sdk_pointed_at
from tests.integration.images import fetch_png, max_abs_diff, mean_abs_diff

# Tiny demo models on a CPU: same-seed reruns may differ by a rounding step, different seeds
# give unrelated noise (mean difference in the tens).
SAME = 2
DIFFERENT = 5.0


@pytest.fixture(scope="module")
def launcher(make_home: Callable[..., Home]) -> Iterator[Launcher]:
    launcher = Launcher(make_home)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def serve(launcher: Launcher) -> Server:
    """`imagesynth serve` with its worker."""
    return launcher()


@pytest.fixture(scope="module")
def serve_idle(launcher: Launcher) -> Server:
    """`imagesynth serve --no-worker`: tasks stay PENDING."""
    return launcher(worker=False)


@pytest.fixture
def sdk(serve: Server) -> Iterator[Server]:
    with sdk_pointed_at(serve):
        yield serve


@pytest.fixture
def idle_sdk(serve_idle: Server, request: pytest.FixtureRequest) -> Iterator[Server]:
    """The idle server with a key of this test's own (a key sees only its own tasks)."""
    key = serve_idle.home.create_key(request.node.name[:40])
    with sdk_pointed_at(serve_idle):
        yield dataclasses.replace(serve_idle, key=key)


def _call(server: Server, **kwargs: object):  # type: ignore[no-untyped-def]
    rsp = ImageSynthesis.call(api_key=server.key, **kwargs)
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "SUCCEEDED", rsp
    return rsp


def test_wan_call_gives_requested_size_and_seeded_pixels(sdk: Server) -> None:
    args = dict(model="wan2.2-t2i-flash", prompt="a lighthouse at dusk", n=2, size="768*512")
    first = _call(sdk, seed=7, **args)
    assert len(first.output.results) == 2
    assert first.usage.image_count == 2
    assert first.output.task_metrics == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    images = [fetch_png(r.url) for r in first.output.results]
    assert [im.size for im in images] == [(768, 512), (768, 512)]
    assert first.output.results[0].orig_prompt == "a lighthouse at dusk"
    assert first.output.results[0].actual_prompt == "a lighthouse at dusk"

    again = [fetch_png(r.url) for r in _call(sdk, seed=7, **args).output.results]
    assert max_abs_diff(images[0], again[0]) <= SAME
    assert max_abs_diff(images[1], again[1]) <= SAME

    other = [fetch_png(r.url) for r in _call(sdk, seed=8, **args).output.results]
    assert mean_abs_diff(images[0], other[0]) > DIFFERENT
    # Image i uses seed+i: image 1 of seed 7 is image 0 of seed 8.
    assert max_abs_diff(images[1], other[0]) <= SAME
    assert mean_abs_diff(images[0], images[1]) > DIFFERENT


def test_qwen_image_plus_1328(sdk: Server) -> None:
    args = dict(model="qwen-image-plus", prompt="a poster that says 你好", size="1328*1328")
    first = _call(sdk, seed=11, **args)
    (result,) = first.output.results
    image = fetch_png(result.url)
    assert image.size == (1328, 1328)
    assert max_abs_diff(image, fetch_png(_call(sdk, seed=11, **args).output.results[0].url)) <= SAME
    other = fetch_png(_call(sdk, seed=12, **args).output.results[0].url)
    assert mean_abs_diff(image, other) > DIFFERENT


def test_qwen_legacy_size_is_exact(sdk: Server) -> None:
    rsp = _call(sdk, model="qwen-image", prompt="a sign", size="1472*1140", seed=3)
    assert fetch_png(rsp.output.results[0].url).size == (1472, 1140)


def test_wanx_v1_default_size_and_seed(sdk: Server) -> None:
    args = dict(model="wanx-v1", prompt="a bird on a branch", n=1)
    first = _call(sdk, seed=5, **args)
    (result,) = first.output.results
    # wanx-v1 results carry only the url, as DashScope's do.
    assert "orig_prompt" not in result and "actual_prompt" not in result
    image = fetch_png(result.url)
    assert image.size == (1024, 1024)
    assert max_abs_diff(image, fetch_png(_call(sdk, seed=5, **args).output.results[0].url)) <= SAME
    other = fetch_png(_call(sdk, seed=6, **args).output.results[0].url)
    assert mean_abs_diff(image, other) > DIFFERENT


def test_async_call_fetch_wait(sdk: Server) -> None:
    rsp = ImageSynthesis.async_call(
        model="wanx2.1-t2i-turbo", prompt="a cat", n=1, size="512*512", api_key=sdk.key
    )
    assert rsp.status_code == 200
    assert rsp.output.task_status == "PENDING"
    task_id = rsp.output.task_id

    fetched = ImageSynthesis.fetch(rsp, api_key=sdk.key)
    assert fetched.status_code == 200
    assert fetched.output.task_id == task_id
    assert fetched.output.task_status in ("PENDING", "RUNNING", "SUCCEEDED")

    done = ImageSynthesis.wait(task_id, api_key=sdk.key)
    assert done.status_code == 200
    assert done.output.task_status == "SUCCEEDED"
    assert done.output.submit_time <= done.output.scheduled_time <= done.output.end_time
    datetime.strptime(done.output.end_time, "%Y-%m-%d %H:%M:%S.%f")
    assert fetch_png(done.output.results[0].url).size == (512, 512)


def test_cancel_pending_task(idle_sdk: Server) -> None:
    rsp = ImageSynthesis.async_call(model="wanx-v1", prompt="a bird", n=1, api_key=idle_sdk.key)
    task_id = rsp.output.task_id
    cancelled = ImageSynthesis.cancel(task_id, api_key=idle_sdk.key)
    assert cancelled.status_code == 200
    assert ImageSynthesis.fetch(task_id, api_key=idle_sdk.key).output.task_status == "CANCELED"
    # Only a PENDING task can be cancelled.
    again = ImageSynthesis.cancel(task_id, api_key=idle_sdk.key)
    assert again.status_code == 400
    assert again.code == "UnsupportedOperation"
    # wait() stops on CANCELED.
    assert ImageSynthesis.wait(task_id, api_key=idle_sdk.key).output.task_status == "CANCELED"


def test_list_with_filters(idle_sdk: Server) -> None:
    key = idle_sdk.key
    ids = {
        model: [
            ImageSynthesis.async_call(model=model, prompt="x", n=1, api_key=key).output.task_id
            for _ in range(count)
        ]
        for model, count in (("wanx-v1", 3), ("wan2.2-t2i-plus", 2))
    }
    ImageSynthesis.cancel(ids["wanx-v1"][0], api_key=key)
    now = datetime.now()
    window = dict(
        start_time=(now - timedelta(hours=1)).strftime("%Y%m%d%H%M%S"),
        end_time=(now + timedelta(minutes=1)).strftime("%Y%m%d%H%M%S"),
    )

    everything = ImageSynthesis.list(api_key=key, page_size=10, **window)
    assert everything.status_code == 200
    assert everything.output["total"] == 5
    listed = {item["task_id"] for item in everything.output["data"]}
    assert listed == set(ids["wanx-v1"] + ids["wan2.2-t2i-plus"])

    v1 = ImageSynthesis.list(api_key=key, model_name="wanx-v1", **window)
    assert {i["task_id"] for i in v1.output["data"]} == set(ids["wanx-v1"])
    assert all(i["model_name"] == "wanx-v1" for i in v1.output["data"])

    pending = ImageSynthesis.list(api_key=key, model_name="wanx-v1", status="PENDING", **window)
    assert {i["task_id"] for i in pending.output["data"]} == set(ids["wanx-v1"][1:])
    cancelled = ImageSynthesis.list(api_key=key, status="CANCELED", **window)
    assert [i["task_id"] for i in cancelled.output["data"]] == [ids["wanx-v1"][0]]
    assert "end_time" in cancelled.output["data"][0]

    page1 = ImageSynthesis.list(api_key=key, page_no=1, page_size=2, **window)
    page3 = ImageSynthesis.list(api_key=key, page_no=3, page_size=2, **window)
    assert page1.output["total_page"] == 3
    assert len(page1.output["data"]) == 2 and len(page3.output["data"]) == 1

    # Without a window: the last 24 h.
    assert ImageSynthesis.list(api_key=key).output["total"] == 5
    # A window in the past holds none of them.
    old = ImageSynthesis.list(api_key=key, start_time="20250101000000", end_time="20250101235959")
    assert old.status_code == 200 and old.output["total"] == 0
