"""Generated images pass an image classifier before anyone can fetch them."""

from __future__ import annotations

from collections.abc import Callable

from dashscope import ImageSynthesis

from tests.integration.conftest import Home, Launcher, Server, sdk_pointed_at


def test_every_image_flagged_fails_the_task_and_leaves_no_file(
    make_home: Callable[..., Home], start: Launcher
) -> None:
    # Threshold 0: every image scores at least that, so every image is flagged.
    home = make_home(image_safety_threshold="0")
    server = start(home=home)
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
    task_files = home.path / "files" / rsp.output.task_id
    assert not task_files.exists() or not list(task_files.rglob("*.png"))
    log = server.proc.output()
    assert f"task_id={rsp.output.task_id}" in log and "stage=image decision=block" in log


def test_images_under_the_threshold_are_served(sdk: Server) -> None:
    rsp = ImageSynthesis.call(
        model="wan2.2-t2i-flash",
        prompt="a harbour",
        api_key=sdk.key,
        n=1,
        size="512*512",
        steps=1,
    )
    assert rsp.output.task_status == "SUCCEEDED" and rsp.output.results[0].url
    assert "stage=image decision=pass" in sdk.proc.output()
