"""Labels on the service's images (in-process, through the SDK), read back the way a user
would: pixels and `imagesynth inspect`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from dashscope import ImageSynthesis
from PIL import Image

from imagesynth.labels.visible import mark_box
from tests.integration.conftest import imagesynth_cli
from tests.integration.images import fetch_png
from tests.integration.inprocess import InProcessService

SAME = 2  # as in test_sdk: same-seed reruns may differ by a rounding step


def _call(server: InProcessService, **kwargs: object):  # type: ignore[no-untyped-def]
    rsp = ImageSynthesis.call(api_key=server.key, **kwargs)
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "SUCCEEDED", rsp
    return rsp


def _inspect(path: Path) -> dict[str, Any]:
    return dict(json.loads(imagesynth_cli("inspect", "--json", str(path)).stdout))


@pytest.mark.parametrize("size", ["512*512", "1440*1440"])  # wan's smallest and largest
def test_watermark_changes_only_the_bottom_right(sdk: InProcessService, size: str) -> None:
    args = dict(model="wan2.2-t2i-flash", prompt="a harbour at noon", n=1, size=size, seed=21)
    plain = fetch_png(_call(sdk, watermark=False, **args).output.results[0].url)
    marked = fetch_png(_call(sdk, watermark=True, **args).output.results[0].url)
    width, height = plain.size
    diff = np.abs(np.asarray(plain, np.int16) - np.asarray(marked, np.int16)).max(axis=2)
    box = mark_box(width, height, "AI生成")
    outside = diff.copy()
    outside[box.top :, box.left :] = 0
    assert outside.max() <= SAME
    # The mark is there: strong changes, at least 5% of the shortest side high.
    rows = np.flatnonzero((diff > 64).any(axis=1))
    assert rows.size and rows[-1] - rows[0] + 1 >= 0.05 * min(width, height)
    assert (diff > 64).sum() > 0.002 * width * height


def test_inspect_reads_label_parameters_and_invisible_mark(
    sdk: InProcessService, tmp_path: Path
) -> None:
    rsp = _call(
        sdk,
        model="wan2.2-t2i-flash",
        prompt="a lighthouse 灯塔",
        negative_prompt="blurry",
        n=2,
        size="1024*1024",
        seed=7,
        steps=3,
        watermark=True,
    )
    result = rsp.output.results[1]
    png = tmp_path / "result.png"
    png.write_bytes(httpx.get(result.url, timeout=60).content)

    report = _inspect(png)
    assert report["ai_generated"] is True
    assert report["aigc"]["Label"] == "1"
    assert report["aigc"]["ContentProducer"] == "imagesynth"
    assert report["aigc"]["ProduceID"] == rsp.output.task_id
    assert report["aigc_sources"] == ["XMP", "PNG text AIGC"]
    p = report["parameters"]
    assert (p["model"], p["task_id"]) == ("wan2.2-t2i-flash", rsp.output.task_id)
    assert p["image_index"] == 1
    assert (p["prompt"], p["actual_prompt"]) == ("a lighthouse 灯塔", result.actual_prompt)
    assert p["negative_prompt"] == "blurry"
    assert (p["seed"], p["steps"], p["size"]) == (8, 3, "1024*1024")  # image 1: seed + 1
    assert p["visible_watermark"] == "AI生成"
    assert report["invisible_watermark"]["found"] is True

    text = imagesynth_cli("inspect", str(png)).stdout
    assert "Label=1 (AI-generated)" in text and "seed: 8" in text
    assert "invisible watermark: present" in text

    # Re-shared: halved and saved as JPEG q80, which drops the metadata; the invisible mark
    # stays, read at the file's size doubled or after scaling it back up. The wan demo's
    # low-contrast texture keeps it (0-1 of 64 bits wrong); the qwen-image and wanx-v1 demos'
    # full-range noise does not survive the downscale (tests/unit/test_labels.py shows both,
    # and the mark surviving on photo-like images).
    with Image.open(png) as image:
        half = image.convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)
    small = tmp_path / "shared.jpg"
    half.save(small, format="JPEG", quality=80)
    report = _inspect(small)
    assert report["aigc"] is None and report["parameters"] is None
    assert report["invisible_watermark"]["found"] is True
    assert report["invisible_watermark"]["scale"] == 2.0
    assert report["ai_generated"] is True
    back = tmp_path / "back.jpg"
    buf = io.BytesIO()
    half.save(buf, format="JPEG", quality=80)
    Image.open(buf).resize((1024, 1024), Image.Resampling.BICUBIC).save(back, quality=95)
    assert _inspect(back)["invisible_watermark"]["found"] is True
