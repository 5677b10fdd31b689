"""What real DashScope clients hit beyond the basic calls: the asyncio client behind a proxy,
trailing slashes, the 2.0 client's task list, streamed calls, result file names, text no
tokenizer takes, unknown URLs, and the newer models and the image-generation protocol."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import dashscope
import httpx
import pytest
from dashscope import ImageSynthesis, MultiModalConversation
from dashscope.aigc.image_generation import ImageGeneration
from dashscope.aigc.image_synthesis import AioImageSynthesis
from PIL import Image

from tests.integration.api_client import ASYNC, SUBMIT_PATH
from tests.integration.conftest import sdk_at
from tests.integration.host_rewriting_proxy import host_rewriting_proxy
from tests.integration.inprocess import InProcessService

MULTIMODAL = "/api/v1/services/aigc/multimodal-generation/generation"
IMAGE_GENERATION = "/api/v1/services/aigc/image-generation/generation"
FLASH = {"model": "wan2.2-t2i-flash", "prompt": "a cat", "n": 1, "size": "512*512"}


def messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def image_at(server: InProcessService, url: str) -> Image.Image:
    return server.fetch_png(url)


# -- 1. the asyncio client through a Host-rewriting proxy; no redirects anywhere -------------


def test_asyncio_client_through_a_host_rewriting_proxy(http_server: InProcessService) -> None:
    key = http_server.key

    async def calls() -> list[Any]:
        done = await AioImageSynthesis.call(api_key=key, **FLASH)
        submitted = await AioImageSynthesis.async_call(api_key=key, **FLASH)
        waited = await AioImageSynthesis.wait(submitted, api_key=key)
        fetched = await AioImageSynthesis.fetch(submitted, api_key=key)
        return [done, waited, fetched]

    with host_rewriting_proxy(http_server.url) as (base, log), sdk_at(base + "/api/v1"):
        replies = asyncio.run(calls())

    for rsp in replies:
        assert rsp.status_code == 200, (rsp.code, rsp.message)
        assert rsp.output.task_status == "SUCCEEDED"
        assert image_at(http_server, rsp.output.results[0].url).size == (512, 512)
    assert not [entry for entry in log if 300 <= entry[2] < 400], log
    # The asyncio client's polls end in a slash: those are the ones that were redirected.
    assert any(path.split("?")[0].endswith("/") for _, path, _ in log), log
    assert all(status == 200 for _, _, status in log), log


def test_every_route_answers_with_and_without_a_trailing_slash(server: InProcessService) -> None:
    task_id = server.submit({"model": "wanx-v1", "input": {"prompt": "a bird"}})
    documented = server.app.openapi()["paths"]
    routes = {p: methods for p, methods in documented.items() if not p.startswith("/files/")}
    assert len(routes) >= 10
    with server.client() as c:
        for template, methods in routes.items():
            path = template.replace("{task_id}", task_id).replace("{ref}", "nobody")
            path = path.replace("{model}", "wanx-v1")
            for method in sorted(m.upper() for m in methods):
                plain = c.request(method, path)
                slashed = c.request(method, path + "/")
                assert plain.status_code < 300 or plain.status_code >= 400, (method, path)
                assert slashed.status_code < 300 or slashed.status_code >= 400, (method, path)
                assert "location" not in slashed.headers, (method, path)
                # The route's own handler answered both (not "no such URL").
                for r in (plain, slashed):
                    assert r.status_code != 404, (method, path)
                    if r.status_code >= 400:
                        body = r.json()
                        message = body["error"]["message"] if "error" in body else body["message"]
                        assert not message.startswith("url error"), (method, path)
        assert c.get(f"/api/v1/tasks/{task_id}/?page_no=1").json()["output"]["task_id"] == task_id


# -- 2. task lists both SDK generations read ---------------------------------------------------


def test_the_2_0_client_and_the_1_x_sdk_both_list_tasks(idle_sdk: InProcessService) -> None:
    ids = [idle_sdk.submit({"model": "wanx-v1", "input": {"prompt": f"p{i}"}}) for i in range(3)]
    client = dashscope.Client(api_key=idle_sdk.key, base_url=idle_sdk.api)
    listed = client.images.jobs.list(page_size=10)
    assert {job.task_id for job in listed.tasks} == set(ids)
    assert {job.status for job in listed.tasks} == {"PENDING"}
    assert listed.total == 3

    old = ImageSynthesis.list(api_key=idle_sdk.key, page_size=10)
    assert old.status_code == 200
    assert {item["task_id"] for item in old.output["data"]} == set(ids)


# -- 3. streamed calls -------------------------------------------------------------------------


def test_multimodal_stream_yields_frames_whose_last_holds_the_image(
    sdk: InProcessService,
) -> None:
    frames = list(
        MultiModalConversation.call(
            api_key=sdk.key,
            model="qwen-image-plus",
            messages=messages("a poster that says hello"),
            size="928*1664",  # Qwen's smallest
            prompt_extend=False,
            stream=True,
        )
    )
    assert frames and all(f.status_code == 200 for f in frames), [f.message for f in frames]
    (item,) = frames[-1].output.choices[0].message.content
    assert image_at(sdk, item["image"]).size == (928, 1664)


def test_raw_sse_request_gets_dashscope_framing(server: InProcessService) -> None:
    body = {  # the fastest model on this endpoint, at its smallest size
        "model": "z-image-turbo",
        "input": {"messages": messages("a lighthouse")},
        "parameters": {"size": "512*512", "prompt_extend": False},
    }
    with server.client() as c:
        r = c.post(MULTIMODAL, json=body, headers={"X-DashScope-SSE": "enable"})
        plain = c.post(MULTIMODAL, json=body)
        bad = c.post(
            MULTIMODAL,
            json={**body, "parameters": {"size": "7*7"}},
            headers={"Accept": "text/event-stream"},
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f.strip() and not f.startswith(":")]
    lines = frames[-1].split("\n")
    assert lines[0] == "id:1" and lines[1] == "event:result" and lines[2] == ":HTTP_STATUS/200"
    data = json.loads(lines[3].removeprefix("data:"))
    assert data["request_id"] and data["usage"]["image_count"] == 1
    assert data["output"]["choices"][0]["message"]["content"][0]["image"].startswith("http")
    # Without the ask, the same call answers plain JSON.
    assert plain.headers["content-type"] == "application/json"
    assert plain.json()["output"]["choices"][0]["finish_reason"] == "stop"
    # Errors are framed the same way, under their own status.
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/event-stream")
    error = bad.text.strip().split("\n")
    assert error[:3] == ["id:1", "event:error", ":HTTP_STATUS/400"]
    payload = json.loads(error[3].removeprefix("data:"))
    assert payload["code"] == "InvalidParameter" and "size must be W*H" in payload["message"]


# -- 4. result file names ----------------------------------------------------------------------


def test_result_file_names_are_unique_and_the_seed_sample_keeps_both(
    sdk: InProcessService, tmp_path: Path
) -> None:
    saved: list[Path] = []
    for prompt in ("a red fox", "a blue whale"):
        rsp = ImageSynthesis.call(api_key=sdk.key, **{**FLASH, "prompt": prompt})
        assert rsp.status_code == 200 and rsp.output.task_status == "SUCCEEDED"
        # The sample from DashScope's help center, as it stands:
        for result in rsp.output.results:
            file_name = PurePosixPath(unquote(urlparse(result.url).path)).parts[-1]
            with open(tmp_path / file_name, "wb+") as f:
                f.write(httpx.get(result.url).content)
            saved.append(tmp_path / file_name)
            assert rsp.output.task_id in file_name
    assert len({p.name for p in saved}) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in saved)
    for path in saved:
        assert Image.open(path).size == (512, 512)


# -- 5. text no tokenizer takes ----------------------------------------------------------------


def _refused_for_surrogate(status: int, body: dict[str, Any]) -> None:
    assert status == 400, body
    assert set(body) == {"request_id", "code", "message"}
    assert body["code"] == "InvalidParameter" and "input.prompt" in body["message"]


def test_a_lone_surrogate_prompt_is_refused_at_submit(sdk: InProcessService) -> None:
    before = len(sdk.tasks())
    # The Python SDK cannot even encode one: it fails locally and sends nothing.
    with pytest.raises(UnicodeEncodeError):
        ImageSynthesis.async_call(api_key=sdk.key, model="wanx-v1", prompt="a cat \ud800", n=1)

    # curl, with the JSON escape a hand-written body has.
    body = '{"model":"wanx-v1","input":{"prompt":"a cat \\udc00 sits"},"parameters":{"n":1}}'
    curl = subprocess.run(
        [
            *("curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", sdk.url + SUBMIT_PATH),
            *("-H", f"Authorization: Bearer {sdk.key}", "-H", "X-DashScope-Async: enable"),
            *("-H", "Content-Type: application/json", "--data-binary", body),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    text, status = curl.stdout.rsplit("\n", 1)
    _refused_for_surrogate(int(status), json.loads(text))

    # JavaScript (the Node SDK's JSON.stringify escapes a lone surrogate and sends it).
    if shutil.which("node") is None:
        print("SKIPPED the Node.js half: no `node` on PATH")
    else:
        script = (
            "const [url, key] = process.argv.slice(1);"
            "fetch(url, {method: 'POST', headers: {Authorization: 'Bearer ' + key,"
            "'X-DashScope-Async': 'enable', 'Content-Type': 'application/json'},"
            "body: JSON.stringify({model: 'wanx-v1', input: {prompt: 'a cat \\ud800'},"
            "parameters: {n: 1}})}).then(async r => console.log(r.status, await r.text()));"
        )
        node = subprocess.run(
            ["node", "-e", script, sdk.url + SUBMIT_PATH, sdk.key],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        status_text, reply = node.stdout.strip().split(" ", 1)
        _refused_for_surrogate(int(status_text), json.loads(reply))
    assert len(sdk.tasks()) == before  # nothing was queued


# -- 6. unknown URLs ---------------------------------------------------------------------------


def test_unknown_urls_get_dashscope_url_error(server: InProcessService) -> None:
    with server.client() as c:
        for r in (
            c.post(
                "/api/v1/services/aigc/image2image/image-synthesis",
                json={"model": "wanx2.1-imageedit", "input": {"prompt": "x"}},
                headers=ASYNC,
            ),
            c.get("/api/v1/no/such/route"),
            c.delete("/api/v1/tasks/abc"),
        ):
            assert r.status_code == 400, r.text
            body = r.json()
            assert set(body) == {"request_id", "code", "message"}
            assert body["code"] == "InvalidParameter"
            assert body["message"].startswith("url error, please check url")
        # A model on an endpoint that doesn't serve it: the same error, naming the right one.
        r = c.post(
            MULTIMODAL,
            json={"model": "wanx-v1", "input": {"messages": messages("x")}},
        )
        assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"
        assert "text2image/image-synthesis" in r.json()["message"]


# -- 7. today's models and the image-generation protocol --------------------------------------


def test_wan2_6_async_and_sync_on_image_generation(sdk: InProcessService) -> None:
    common = {"api_key": sdk.key, "model": "wan2.6-t2i", "n": 1, "prompt_extend": False}
    done = ImageGeneration.call(messages=messages("a koi pond"), size="1280*1280", **common)
    assert done.status_code == 200, (done.code, done.message)
    assert done.output.finished is True
    (item,) = done.output.choices[0].message.content
    assert item["type"] == "image"
    assert image_at(sdk, item["image"]).size == (1280, 1280)
    assert done.usage["image_count"] == 1 and done.usage["size"] == "1280*1280"

    task = ImageGeneration.async_call(messages=messages("a koi pond"), size="2560*640", **common)
    assert task.status_code == 200 and task.output.task_status == "PENDING"
    waited = ImageGeneration.wait(task, api_key=sdk.key)
    assert waited.output.task_status == "SUCCEEDED"
    (item,) = waited.output.choices[0].message.content
    assert image_at(sdk, item["image"]).size == (2560, 640)

    # The 2.0 client's route to the same protocol.
    job = dashscope.Client(api_key=sdk.key, base_url=sdk.api).images.jobs.create(
        model="wan2.6-t2i", prompt="a koi pond", n=1, size="1440*1440", prompt_extend=False
    )
    assert job.status == "PENDING"
    # No need to run it; but an idle worker wakes at the submit and may have taken it.
    if ImageGeneration.cancel(job.task_id, api_key=sdk.key).status_code != 200:
        assert ImageGeneration.wait(job.task_id, api_key=sdk.key).output.task_status in (
            "SUCCEEDED",
            "CANCELED",
        )

    with sdk.client() as c:
        sync = c.post(
            IMAGE_GENERATION,
            json={
                "model": "wan2.6-t2i",
                "input": {"messages": messages("a koi pond")},
                "parameters": {"n": 1, "size": "1280*1280", "prompt_extend": False},
            },
        )
    assert sync.status_code == 200 and sync.json()["output"]["finished"] is True

    for bad in ("1024*1024", "2880*600"):  # too few pixels; wider than 4:1
        rsp = ImageGeneration.call(messages=messages("a koi pond"), size=bad, **common)
        assert rsp.status_code == 400 and rsp.code == "InvalidParameter", bad
        assert "1280*1280" in rsp.message and "1:4" in rsp.message


def test_wan2_5_preview_sizes_and_prompt_length(sdk: InProcessService) -> None:
    ok = ImageSynthesis.call(
        api_key=sdk.key, model="wan2.5-t2i-preview", prompt="x" * 1900, n=1, size="1440*1152"
    )
    assert ok.status_code == 200 and ok.output.task_status == "SUCCEEDED"
    assert image_at(sdk, ok.output.results[0].url).size == (1440, 1152)
    assert len(ok.output.results[0].orig_prompt) == 1900  # within its 2000 characters
    bad = ImageSynthesis.async_call(
        api_key=sdk.key, model="wan2.5-t2i-preview", prompt="x", n=1, size="1024*1024"
    )
    assert bad.status_code == 400 and bad.code == "InvalidParameter"
    assert "wan2.5-t2i-preview" in bad.message


@pytest.mark.parametrize(
    ("model", "good", "bad", "extend"),
    [
        ("qwen-image-max", "1104*1472", "1024*1024", True),
        ("z-image-turbo", "1024*1536", "2048*2560", False),
    ],
)
def test_newer_multimodal_models(
    sdk: InProcessService, model: str, good: str, bad: str, extend: bool
) -> None:
    ok = MultiModalConversation.call(
        api_key=sdk.key, model=model, messages=messages("a tea house"), size=good
    )
    assert ok.status_code == 200, (ok.code, ok.message)
    (item,) = ok.output.choices[0].message.content
    width, height = (int(v) for v in good.split("*"))
    assert image_at(sdk, item["image"]).size == (width, height)
    # prompt_extend as the model defaults it (z-image-turbo: off unless asked for).
    task = sdk.services.tasks.store.get_task(sdk.tasks()[0]["task_id"])
    assert task is not None and task.params.prompt_extend is extend

    refused = MultiModalConversation.call(
        api_key=sdk.key, model=model, messages=messages("a tea house"), size=bad
    )
    assert refused.status_code == 400 and refused.code == "InvalidParameter"
    two = MultiModalConversation.call(
        api_key=sdk.key, model=model, messages=messages("a tea house"), n=2, size=good
    )
    assert two.status_code == 400 and "n must be 1" in two.message
    # Neither is served on the text2image endpoint.
    old = ImageSynthesis.async_call(api_key=sdk.key, model=model, prompt="a tea house")
    assert old.status_code == 400 and old.message.startswith("url error")
