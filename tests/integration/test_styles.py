"""wanx-v1 styles through the official SDK (an in-process service on a real port): each changes
the image, deterministically."""

from __future__ import annotations

import pytest
from dashscope import ImageSynthesis

from imagesynth.catalog import STYLES
from tests.integration.images import fetch_png, max_abs_diff, mean_abs_diff
from tests.integration.inprocess import InProcessService
from tests.integration.test_sdk import SAME


def _image(server: InProcessService, **kwargs: object):  # type: ignore[no-untyped-def]
    rsp = ImageSynthesis.call(
        model="wanx-v1",
        prompt="a crane by a lake",
        n=1,
        size="720*1280",
        seed=21,
        api_key=server.key,
        **kwargs,
    )
    assert rsp.status_code == 200 and rsp.output.task_status == "SUCCEEDED", rsp
    return fetch_png(rsp.output.results[0].url)


def test_styles_change_the_image_deterministically(sdk: InProcessService) -> None:
    anime = _image(sdk, style="<anime>")
    sketch = _image(sdk, style="<sketch>")
    assert anime.size == sketch.size == (720, 1280)
    assert mean_abs_diff(anime, sketch) > 1.0
    assert max_abs_diff(anime, _image(sdk, style="<anime>")) <= SAME
    # <auto> is the prompt as given: the same image as no style at all.
    assert max_abs_diff(_image(sdk, style="<auto>"), _image(sdk)) <= SAME


@pytest.mark.parametrize("style", ["<cyberpunk>", "anime", "", "<ANIME>", "<auto> "])
def test_every_other_style_is_refused(sdk: InProcessService, style: str) -> None:
    rsp = ImageSynthesis.async_call(model="wanx-v1", prompt="x", n=1, style=style, api_key=sdk.key)
    assert (rsp.status_code, rsp.code) == (400, "InvalidParameter")
    assert "style must be one of " + ", ".join(STYLES) in rsp.message
