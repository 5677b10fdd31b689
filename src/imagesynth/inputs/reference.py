"""Reference images (wanx-v1 `ref_img`): check what arrived, and shape it for the pipeline."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from imagesynth.errors import InvalidParameter, UnsupportedFileFormat

FORMATS = {
    "JPEG": "JPG/JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "BMP": "BMP",
    "TIFF": "TIFF",
    "WEBP": "WEBP",
}
MIN_SIDE = 256
MAX_SIDE = 4096


def decode_reference(data: bytes) -> Image.Image:
    """The image in `data` as RGB, or a clear error: a format DashScope accepts, 256..4096 px
    per side. The whole image is decoded, so a truncated or disguised file is caught here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or ""
            if fmt not in FORMATS:
                raise UnsupportedFileFormat(
                    f"ref_img: format {fmt or 'unknown'} is not supported; "
                    "use JPG, JPEG, PNG, BMP, TIFF or WEBP."
                )
            width, height = image.size
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
                raise InvalidParameter(
                    f"ref_img must be {MIN_SIDE}..{MAX_SIDE} px per side; got {width}x{height}"
                )
            image.load()
    except (InvalidParameter, UnsupportedFileFormat):
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ):
        raise UnsupportedFileFormat(
            "ref_img is not a readable image; use JPG, JPEG, PNG, BMP, TIFF or WEBP."
        ) from None
    return ImageOps.exif_transpose(image).convert("RGB")


def cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale and center-crop to exactly width x height (no distortion)."""
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


def style_only(image: Image.Image) -> Image.Image:
    """The `refonly` fallback's starting point: the reference blurred until its shapes are gone
    but its palette and light remain."""
    radius = max(image.size) / 12
    return image.filter(ImageFilter.GaussianBlur(radius))
