"""Generated images pass an image classifier before anyone can fetch them; every decision is on
the audit trail (the `imagesynth.audit` logger's records, with their structured fields)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from dashscope import ImageSynthesis

from tests.integration.conftest import sdk_pointed_at
from tests.integration.images import fetch_png
from tests.integration.inprocess import InProcessService


def image_decisions(caplog: pytest.LogCaptureFixture, task_id: str) -> list[dict[str, Any]]:
    """The audit trail's image decisions on a task, as its structured fields, by image."""
    found = [
        dict(r.audit)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "imagesynth.audit"
        and r.audit.get("stage") == "image"  # type: ignore[attr-defined]
        and r.audit.get("task_id") == task_id  # type: ignore[attr-defined]
    ]
    return sorted(found, key=lambda d: d["index"])


def test_every_image_flagged_fails_the_task_and_leaves_no_file(
    start_service: Callable[..., InProcessService], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagesynth.audit")
    # Threshold 0: every image scores at least that, so every image is flagged.
    server = start_service(transport="http", image_safety_threshold=0)
    with sdk_pointed_at(server):
        rsp = ImageSynthesis.call(
            model="wan2.2-t2i-flash",
            prompt="a harbour",
            api_key=server.key,
            n=2,
            size="512*512",
            steps=1,
        )
    assert rsp.status_code == 200, rsp  # the SDK reports a FAILED task in output
    assert rsp.output.task_status == "FAILED"
    assert rsp.output.code == "DataInspectionFailed"
    assert rsp.output.message == "Input or output data may contain inappropriate content."
    assert "results" not in rsp.output or not rsp.output.results
    task_files = server.path / "files" / rsp.output.task_id
    assert not task_files.exists() or not list(task_files.rglob("*.png"))
    decisions = image_decisions(caplog, rsp.output.task_id)
    assert [(d["index"], d["decision"]) for d in decisions] == [(0, "block"), (1, "block")]
    assert all(d["threshold"] == 0 for d in decisions)


def test_images_under_the_threshold_are_served(
    sdk: InProcessService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagesynth.audit")
    rsp = ImageSynthesis.call(
        model="wan2.2-t2i-flash",
        prompt="a harbour",
        api_key=sdk.key,
        n=1,
        size="512*512",
        steps=1,
    )
    assert rsp.output.task_status == "SUCCEEDED" and rsp.output.results[0].url
    assert fetch_png(rsp.output.results[0].url).size == (512, 512)
    (decision,) = image_decisions(caplog, rsp.output.task_id)
    assert decision["decision"] == "pass"
