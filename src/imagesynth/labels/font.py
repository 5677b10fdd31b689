"""The CJK font of the visible mark, shipped by a PyPI package the project depends on.

`pylopdf-fonts-zh-cn` carries Noto Sans SC (SIL OFL 1.1). Pillow's built-in font has no CJK
glyphs: it would draw "AI生成" as "AI" and two empty boxes, so there is no fallback.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from PIL import ImageFont

from imagesynth.labels import LabelError

FONT_PACKAGE = "pylopdf_fonts_zh_cn"
FONT_FILE = "NotoSansSC-Regular.otf"


@lru_cache(maxsize=1)
def font_path() -> Path:
    """The font file; LabelError naming the package if it is not installed."""
    try:
        path = Path(str(resources.files(FONT_PACKAGE).joinpath(FONT_FILE)))
    except ModuleNotFoundError:
        raise LabelError(
            f"the CJK font for the visible watermark is missing: Python package "
            f"{FONT_PACKAGE.replace('_', '-')} is not installed (run scripts/setup.sh)"
        ) from None
    if not path.is_file():
        raise LabelError(f"the CJK font for the visible watermark is missing: no {path}")
    return path


@lru_cache(maxsize=64)
def load_font(size: int) -> ImageFont.FreeTypeFont:
    """The mark's font at `size` pixels (cached: a size is reused for every image of a task)."""
    return ImageFont.truetype(str(font_path()), size)
