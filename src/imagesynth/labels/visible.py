"""The visible mark: white text with a dark outline in the bottom-right corner.

DashScope draws "AI生成" on Wan and wanx images and "Qwen-Image" on Qwen-Image ones when a
request says `watermark=true`. The text is at least 5% of the shortest side high (what the
secondary sources on China's labelling standard ask of a visible label), and the margin scales
with the image, so the mark reads the same at 512*512 and at 1664*928.

Everything the mark touches lies inside `mark_box()`, whose top-left corner is on the 8-pixel
grid: the invisible watermark works on 8x8-pixel blocks, so a marked and an unmarked image of
the same seed also differ only there after it (tests check this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from imagesynth.labels.font import load_font

WAN_TEXT = "AI生成"
QWEN_TEXT = "Qwen-Image"

MIN_TEXT_HEIGHT = 0.05  # of the shortest side: the ink of the text, not the font size
MARGIN = 0.025  # of the shortest side, from the right and bottom edges
GRID = 8  # the invisible watermark's block size in pixels
FILL = (255, 255, 255, 235)
OUTLINE = (0, 0, 0, 170)


def default_text(family: str) -> str:
    """The mark DashScope draws for a model family."""
    return QWEN_TEXT if family == "qwen-image" else WAN_TEXT


@dataclass(frozen=True)
class Box:
    """A pixel rectangle, right and bottom exclusive (PIL's convention)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


@dataclass(frozen=True)
class _Layout:
    font: ImageFont.FreeTypeFont
    stroke: int
    origin: tuple[int, int]  # where to draw the text, relative to the box
    ink: Box  # the text's ink (outline included), in image coordinates
    box: Box


@lru_cache(maxsize=256)
def _layout(width: int, height: int, text: str) -> _Layout:
    short = min(width, height)
    want = math.ceil(MIN_TEXT_HEIGHT * short)
    # Font size -> ink height is close to linear: size from a reference, then step up until met.
    ref = load_font(100).getbbox(text)
    size = max(8, math.ceil(want * 100 / (ref[3] - ref[1])))
    while True:
        font = load_font(size)
        bbox = font.getbbox(text)
        left, top = math.floor(bbox[0]), math.floor(bbox[1])
        right, bottom = math.ceil(bbox[2]), math.ceil(bbox[3])
        if bottom - top >= want:
            break
        size += 1
    stroke = max(1, round(size * 0.06))
    margin = max(4, round(MARGIN * short))
    ink_w = right - left + 2 * stroke
    ink_h = bottom - top + 2 * stroke
    ink = Box(width - margin - ink_w, height - margin - ink_h, width - margin, height - margin)
    box = Box(ink.left // GRID * GRID, ink.top // GRID * GRID, width, height)
    if box.left < 0 or box.top < 0:
        raise ValueError(f"a {width}x{height} image is too small for the mark {text!r}")
    origin = (ink.left - box.left + stroke - left, ink.top - box.top + stroke - top)
    return _Layout(font, stroke, origin, ink, box)


def mark_box(width: int, height: int, text: str) -> Box:
    """The region `draw_mark` may change on a width x height image; nothing outside it."""
    return _layout(width, height, text).box


def text_box(width: int, height: int, text: str) -> Box:
    """Where the text's ink (with its outline) lies: for legibility checks."""
    return _layout(width, height, text).ink


def draw_mark(image: Image.Image, text: str) -> Image.Image:
    """A copy of `image` (as RGB) with `text` drawn in its bottom-right corner."""
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    lay = _layout(out.width, out.height, text)
    box = (lay.box.left, lay.box.top, lay.box.right, lay.box.bottom)
    overlay = Image.new("RGBA", (lay.box.width, lay.box.height), (0, 0, 0, 0))
    ImageDraw.Draw(overlay).text(
        lay.origin,
        text,
        font=lay.font,
        fill=FILL,
        stroke_width=lay.stroke,
        stroke_fill=OUTLINE,
    )
    region = out.crop(box).convert("RGBA")
    out.paste(Image.alpha_composite(region, overlay).convert("RGB"), box[:2])
    return out
