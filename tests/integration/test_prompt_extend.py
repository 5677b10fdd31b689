"""prompt_extend through the service (in-process, its prompt stage running as in `serve`): an
OpenAI-compatible rewriter served by the test, one that is too slow, and a local transformers
LM built offline; blocked prompts."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from dashscope import ImageSynthesis
from openai import OpenAI

from imagesynth.config import Settings
from tests.integration.conftest import sdk_pointed_at
from tests.integration.images import fetch_png
from tests.integration.inprocess import InProcessService, open_service
from tests.unit.tiny_lm import build_tiny_lm

MODEL = "wan2.2-t2i-flash"
REWRITE = "a lighthouse on a cliff at dusk, waves breaking below, warm window light"
TIMEOUT = 1.5


class FakeLLM(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: a slow answer when the user's prompt says 'slowly'."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if "slowly" in body["messages"][-1]["content"]:
            time.sleep(TIMEOUT * 4)
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": REWRITE}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the rewriter gave up waiting, rightly
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_llm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeLLM.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture(scope="module")
def screening(make_settings: Callable[..., Settings]) -> Iterator[InProcessService]:
    """A service with no worker, for tests that only submit."""
    with open_service(make_settings(), workers=0, transport="http") as service:
        yield service


def moment(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def generate(server: InProcessService, prompt: str, **extra: Any) -> Any:
    with sdk_pointed_at(server):
        rsp = ImageSynthesis.call(
            model=MODEL, prompt=prompt, api_key=server.key, n=1, size="512*512", steps=1, **extra
        )
    assert rsp.status_code == 200, rsp
    return rsp


def test_openai_compatible_rewriter_and_its_timeout(
    fake_llm: str, start_service: Callable[..., InProcessService]
) -> None:
    server = start_service(
        transport="http",
        prompt_stage=True,
        rewriter_base_url=fake_llm,
        rewriter_model="prompt-writer",
        rewriter_api_key="llm-secret",
        rewriter_timeout_seconds=TIMEOUT,
    )

    rsp = generate(server, "a lighthouse")
    assert rsp.output.task_status == "SUCCEEDED"
    result = rsp.output.results[0]
    assert result.actual_prompt == REWRITE and result.orig_prompt == "a lighthouse"
    (asked,) = FakeLLM.requests
    assert asked["path"] == "/v1/chat/completions" and asked["auth"] == "Bearer llm-secret"
    assert asked["body"]["model"] == "prompt-writer"

    # Too slow: the task goes on with the prompt as given, once the time budget is spent.
    slow = generate(server, "a lighthouse, drawn slowly")
    assert slow.output.task_status == "SUCCEEDED"
    assert slow.output.results[0].actual_prompt == "a lighthouse, drawn slowly"
    assert "no reply within" in slow.output.prompt_extend_note  # says why it was kept
    waited = moment(slow.output.scheduled_time) - moment(slow.output.submit_time)
    assert TIMEOUT * 0.9 <= waited <= TIMEOUT + 2.0, waited

    # prompt_extend=false skips the rewriter (and, as on DashScope, has no actual_prompt).
    plain = generate(server, "a lighthouse", prompt_extend=False)
    assert "actual_prompt" not in plain.output.results[0]
    assert len(FakeLLM.requests) == 2

    # The OpenAI front: the rewrite is the image's revised_prompt; none when not asked for.
    client = OpenAI(base_url=server.url + "/v1", api_key=server.key)
    rewritten = client.images.generate(model=MODEL, prompt="a lighthouse", size="512x512")
    assert rewritten.data and rewritten.data[0].revised_prompt == REWRITE
    kept = client.images.generate(
        model=MODEL, prompt="a lighthouse", size="512x512", extra_body={"prompt_extend": False}
    )
    assert kept.data and kept.data[0].revised_prompt is None


def test_local_lm_rewriter_runs_through_transformers(
    tmp_path: Path, start_service: Callable[..., InProcessService]
) -> None:
    # (What `serve` and `models list` say about it: test_cli.py.)
    reply = "lone lighthouse on stormy cliffs at dusk"  # no token twice: see tiny_lm
    lm = build_tiny_lm(tmp_path / "tiny-lm", reply)
    server = start_service(
        transport="http", prompt_stage=True, rewriter_path=lm, rewriter_timeout_seconds=60
    )

    rsp = generate(server, "a lighthouse")
    assert rsp.output.results[0].actual_prompt == reply
    assert "prompt_extend_note" not in rsp.output
    # A Chinese prompt must not come back in English: the rewrite is dropped.
    zh = generate(server, "海边的灯塔")
    assert zh.output.results[0].actual_prompt == "海边的灯塔"


def test_without_a_rewriter_the_prompt_is_kept(sdk: InProcessService) -> None:
    # (That `models list` says prompt_extend is unavailable: test_cli.py.)
    rsp = generate(sdk, "a lighthouse")
    assert rsp.output.task_status == "SUCCEEDED"
    (result,) = rsp.output.results
    assert result.actual_prompt == result.orig_prompt == "a lighthouse"
    assert fetch_png(result.url).size == (512, 512)


@pytest.mark.parametrize(
    "field,text",
    [
        ("prompt", "a nude woman on a beach"),
        ("prompt", "N.U.D.E portrait"),
        ("prompt", "Ｎｕｄｅ portrait"),
        ("prompt", "n u d e portrait"),
        ("prompt", "色 情 图片"),
        ("prompt", "色\u200b情图片"),
        ("negative_prompt", "blurry, child porn"),
    ],
)
def test_blocked_terms_and_disguises_are_refused(
    screening: InProcessService, field: str, text: str
) -> None:
    fields = {"prompt": "a portrait", field: text}
    with sdk_pointed_at(screening):
        rsp = ImageSynthesis.async_call(model=MODEL, api_key=screening.key, n=1, **fields)
    assert rsp.status_code == 400
    assert rsp.code == "DataInspectionFailed"
    assert rsp.message == "Input or output data may contain inappropriate content."


@pytest.mark.parametrize(
    "prompt", ["a therapist in Scunthorpe", "the pen is red", "特色，情侣在海边", "a nude lipstick"]
)
def test_clean_prompts_pass(screening: InProcessService, prompt: str) -> None:
    with sdk_pointed_at(screening):
        rsp = ImageSynthesis.async_call(
            model=MODEL, prompt=prompt, api_key=screening.key, n=1, negative_prompt="nsfw, nude"
        )
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "PENDING" and rsp.output.task_id  # queued
