"""Reference images (wanx-v1 `ref_img`): check what arrived, and shape it for the pipeline."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from imagesynth.errors import InvalidParameter, UnsupportedFileFormat
from imagesynth.storage.png import encode_png

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


# No model draws a side longer than 1440 px, so a reference whose shorter side is 1440 px still
# covers any output without being scaled up: a larger one is stored at that size.
STORED_MIN_SIDE = 1440
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_UNREADABLE = (
    UnidentifiedImageError,
    Image.DecompressionBombWarning,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
)


def _unreadable() -> UnsupportedFileFormat:
    return UnsupportedFileFormat(
        "ref_img is not a readable image; use JPG, JPEG, PNG, BMP, TIFF or WEBP."
    )


def open_reference(data: bytes) -> Image.Image:
    """The image in `data`, opened but not decoded: its format and size come from the header,
    so a file that is too large is refused before a byte of pixels is allocated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except _UNREADABLE:
        raise _unreadable() from None
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
    return image


def _stored_size(width: int, height: int) -> tuple[int, int]:
    scale = STORED_MIN_SIDE / min(width, height)
    if scale >= 1:
        return width, height
    return max(round(width * scale), 1), max(round(height * scale), 1)


def load_bounded(image: Image.Image) -> Image.Image:
    """Decode an opened reference (consuming it: its full-size pixels are released as soon
    as they are reduced) to RGB, shrunk so its shorter side is at most STORED_MIN_SIDE, and
    turned upright by its EXIF orientation. The whole file is decoded, so a truncated or
    disguised one is caught here. A JPEG is decoded at a reduced scale where that still
    leaves enough pixels (draft); other formats are reduced by an integer factor straight
    after decoding, before any copy in another mode is made."""
    target = _stored_size(*image.size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if target != image.size and image.format in ("JPEG", "MPO"):
                image.draft("RGB", target)  # picks a scale that still covers the target
            image.load()
            orientation = image.getexif().get(0x0112)  # after load: a PNG's may follow IDAT
            factor = min(image.width // target[0], image.height // target[1])
            reduced = image
            if factor >= 2 and image.mode in ("RGB", "RGBA", "L", "LA", "RGBX", "CMYK"):
                reduced = image.reduce(factor)
                image.close()  # the full-size pixels: up to 64 MB, not needed any more
            rgb = reduced if reduced.mode == "RGB" else reduced.convert("RGB")
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.LANCZOS)
    except _UNREADABLE:
        raise _unreadable() from None
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return rgb.transpose(method) if method is not None else rgb


def decode_reference(data: bytes) -> Image.Image:
    """The image in `data` as bounded RGB, or a clear error: a format DashScope accepts,
    256..4096 px per side, checked from the header before decoding."""
    return load_bounded(open_reference(data))


class ReferenceDecoder:
    """Turns uploaded or fetched reference bytes into the PNG stored with the task, at most
    `max_concurrent` at a time: decoding a 4096x4096 reference briefly needs ~80 MB whatever
    its file size (Pillow keeps RGB in 4 bytes a pixel), so concurrent submissions queue here
    rather than all decode at once. The header checks, which need no memory, come first.

    The decodes run on this decoder's own `max_concurrent` threads rather than on the
    callers': the allocator keeps freed memory per thread arena, so pixels decoded on any of
    the API's many request threads could each leave a peak's worth behind, while here at most
    `max_concurrent` arenas ever hold decoded pixels."""

    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        self._pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="reference-decode")

    def stored_png(self, data: bytes) -> bytes:
        """The reference in `data` as the bounded PNG stored with its task."""
        image = open_reference(data)
        return self._pool.submit(_bounded_png, image).result()


def _bounded_png(image: Image.Image) -> bytes:
    return encode_png(load_bounded(image))


def cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale and center-crop to exactly width x height (no distortion)."""
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


def style_only(image: Image.Image) -> Image.Image:
    """The `refonly` fallback's starting point: the reference blurred until its shapes are gone
    but its palette and light remain."""
    radius = max(image.size) / 12
    return image.filter(ImageFilter.GaussianBlur(radius))
