"""The OpenAI Images API through the official `openai` SDK, against the real server on a real
port: images of the asked size and format, seeds, streamed partial images, errors as the SDK
raises them, and the task such a call is (listed, billed once)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.integration.conftest import clean_environment, imagesynth_cli
from tests.integration.images import fetch_png
from tests.integration.inprocess import InProcessService

MODEL = "wan2.2-t2i-flash"


def sdk(service: InProcessService, key: str | None = None, **options: Any) -> OpenAI:
    return OpenAI(base_url=service.url + "/v1", api_key=key or service.key, **options)


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_b64_json_webp_two_images_of_the_size_and_seed(http_server: InProcessService) -> None:
    client = sdk(http_server)
    asked = dict(
        model=MODEL,
        prompt="a lighthouse at dusk",
        n=2,
        size="1024x1024",
        output_format="webp",
        response_format="b64_json",
        extra_body={"seed": 1234, "prompt_extend": False},
    )
    first = client.images.generate(**asked)  # type: ignore[call-overload]
    assert first.output_format == "webp" and first.size == "1024x1024"
    assert first.data is not None and len(first.data) == 2
    images = [decode(d.b64_json or "") for d in first.data]
    assert [(i.format, i.size) for i in images] == [("WEBP", (1024, 1024))] * 2
    assert "TC260" in images[0].info["xmp"].decode()  # the AIGC label, in XMP
    again = client.images.generate(**asked)  # type: ignore[call-overload]
    assert again.data is not None
    repeat = decode(again.data[0].b64_json or "")
    # WebP at quality 100 is lossy: the same seed gives the same image within its rounding.
    diff = np.abs(np.asarray(images[0], np.int16) - np.asarray(repeat, np.int16))
    assert diff.mean() < 1.0
    assert np.abs(np.asarray(images[0], np.int16) - np.asarray(images[1], np.int16)).mean() > 5


def test_url_png_same_seed_same_pixels(http_server: InProcessService) -> None:
    client = sdk(http_server)
    asked = dict(
        model=MODEL,
        prompt="a red bicycle",
        size="768x512",
        response_format="url",
        extra_body={"seed": 77, "steps": 2, "prompt_extend": False},
    )
    one = client.images.generate(**asked)  # type: ignore[call-overload]
    two = client.images.generate(**asked)  # type: ignore[call-overload]
    assert one.data and two.data and one.data[0].b64_json is None
    a, b = fetch_png(one.data[0].url or ""), fetch_png(two.data[0].url or "")
    assert a.size == (768, 512)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_jpeg_with_compression_and_both_forms_by_default(http_server: InProcessService) -> None:
    rsp = sdk(http_server).images.generate(
        model=MODEL,
        prompt="a field of sunflowers",
        size="512x512",
        output_format="jpeg",
        output_compression=50,
        quality="low",
    )
    assert rsp.data is not None
    (item,) = rsp.data
    image = decode(item.b64_json or "")
    assert (image.format, image.size) == ("JPEG", (512, 512))
    assert "TC260" in image.info["xmp"].decode()
    assert item.url is not None and item.url.endswith(".jpg") is False  # signed: a query follows
    with httpx.Client() as c:
        r = c.get(item.url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == base64.b64decode(item.b64_json or "")
    assert rsp.quality == "low"


def test_stream_partial_images_then_completed(http_server: InProcessService) -> None:
    stream = sdk(http_server).images.generate(
        model=MODEL,
        prompt="a mountain lake",
        size="512x512",
        stream=True,
        partial_images=2,
        extra_body={"steps": 4, "seed": 5},
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]
    for event in events:
        assert decode(event.b64_json).size == (512, 512)
    assert decode(events[-1].b64_json).format == "PNG"


def test_errors_as_the_sdk_raises_them(http_server: InProcessService) -> None:
    with pytest.raises(openai.AuthenticationError) as bad_key:
        sdk(http_server, key="sk-nope").images.generate(model=MODEL, prompt="x")
    assert bad_key.value.code == "invalid_api_key"
    client = sdk(http_server, max_retries=0)
    with pytest.raises(openai.BadRequestError) as blocked:
        client.images.generate(model=MODEL, prompt="how to make a pipe bomb")
    assert blocked.value.code == "moderation_blocked"
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model="qwen-image", prompt="x", size="1024x1024")
    assert bad_size.value.code == "invalid_value" and bad_size.value.param == "size"
    assert "1328x1328" in bad_size.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        client.images.generate(model=MODEL, prompt="x", extra_body={"colour": "red"})
    assert unknown.value.param == "colour"
    with pytest.raises(openai.BadRequestError) as private:  # webhooks: no private addresses
        client.images.generate(
            model=MODEL, prompt="x", extra_body={"callback_url": "http://10.0.0.1/hook"}
        )
    assert private.value.param == "callback_url"
    with pytest.raises(openai.NotFoundError) as no_model:
        client.images.generate(model="dall-e-9", prompt="x")
    assert no_model.value.code == "model_not_found"


def test_models_list(http_server: InProcessService) -> None:
    ids = [m.id for m in sdk(http_server).models.list()]
    assert MODEL in ids and "qwen-image" in ids


def test_rate_limit_429_retry_after_and_the_sdk_retries(
    start_service: Callable[..., InProcessService],
) -> None:
    service = start_service(transport="http")
    key = service.create_key("slow", limited=True, rps=1, in_flight=10)
    raw = {"model": MODEL, "prompt": "x", "size": "512x512", "extra_body": None}
    raw.pop("extra_body")
    with httpx.Client(base_url=service.url, timeout=60) as c:
        headers = {"Authorization": f"Bearer {key}"}
        # At once, so that the bucket cannot refill in between, however slow the machine.
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda _: c.post("/v1/images/generations", json=raw, headers=headers), [0, 1]
                )
            )
    codes = sorted(answers, key=lambda r: r.status_code)
    assert codes[0].status_code == 200
    assert codes[1].status_code == 429 and codes[1].headers["retry-after"] == "1"
    assert codes[1].json()["error"]["code"] == "rate_limit_exceeded"
    client = sdk(service, key=key, max_retries=3)
    started = time.monotonic()
    results = [client.images.generate(model=MODEL, prompt="x", size="512x512") for _ in range(2)]
    assert all(r.data for r in results)
    assert time.monotonic() - started >= 0.9  # the second waited for the retry


def test_an_openai_call_is_a_task_listed_and_billed_once(
    start_service: Callable[..., InProcessService],
) -> None:
    service = start_service(transport="http")
    rsp = sdk(service).images.generate(
        model=MODEL, prompt="a teapot", size="512x512", n=2, user="end-user-7"
    )
    assert rsp.data is not None and len(rsp.data) == 2
    with service.client() as c:
        listed = c.get("/api/v1/tasks").json()
    (item,) = listed["data"]
    assert item["status"] == "SUCCEEDED" and item["model_name"] == MODEL
    with service.client() as c:
        queried = c.get(f"/api/v1/tasks/{item['task_id']}").json()
    assert len(queried["output"]["results"]) == 2
    task = service.services.tasks.store.get_task(item["task_id"])
    assert task is not None and task.params.user == "end-user-7"  # `user`, kept with the task
    env = {**clean_environment(), "IMAGESYNTH_HOME": str(service.runtime.settings.home)}
    rows = json.loads(imagesynth_cli("usage", "--json", env=env).stdout)
    assert [(r["model"], r["calls"], r["images"]) for r in rows] == [(MODEL, 1, 2)]
