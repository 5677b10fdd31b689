"""How the service writes PNGs (results and stored reference images)."""

from __future__ import annotations

import io
from collections.abc import Mapping

from PIL import Image
from PIL.PngImagePlugin import PngInfo

# Real images compress nearly as well at level 1 as at the default 6 in a fraction of the time
# (measured on 1024x1024: a smooth image 35 ms vs 50 ms; the demo's noise 171 vs 194 ms).
COMPRESS_LEVEL = 1
XMP_KEY = "XML:com.adobe.xmp"


def encode_png(
    image: Image.Image, text: Mapping[str, str] | None = None, xmp: str | None = None
) -> bytes:
    """PNG bytes of `image`, with text chunks (tEXt, or iTXt when not Latin-1) and an XMP
    packet (always an uncompressed iTXt chunk `XML:com.adobe.xmp`, as the XMP spec says)."""
    info: PngInfo | None = None
    if text or xmp is not None:
        info = PngInfo()
        if xmp is not None:
            info.add_itxt(XMP_KEY, xmp, zip=False)
        for key, value in (text or {}).items():
            info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=COMPRESS_LEVEL, pnginfo=info)
    return buf.getvalue()
