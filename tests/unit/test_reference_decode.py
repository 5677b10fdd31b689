"""Reference images are checked from their header, decoded a bounded number at a time and
stored no larger than any output needs (inputs/reference.py)."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from imagesynth.errors import InvalidParameter, UnsupportedFileFormat
from imagesynth.inputs import reference
from imagesynth.inputs.reference import (
    STORED_MIN_SIDE,
    ReferenceDecoder,
    decode_reference,
)


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header names a size, followed by a few bytes of pixels: far too few."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)


def test_dimensions_are_refused_from_the_header_alone() -> None:
    # No pixels follow: the answer comes from the header, before anything is decoded.
    with pytest.raises(InvalidParameter, match="8192x8192"):
        decode_reference(png_header_only(8192, 8192))
    with pytest.raises(InvalidParameter, match="4097x512"):
        decode_reference(png_header_only(4097, 512))
    with pytest.raises(UnsupportedFileFormat):
        decode_reference(png_header_only(1024, 1024))  # a fine size, but nothing to decode


@pytest.mark.parametrize(
    ("size", "stored"),
    [
        ((4096, 4096), (1440, 1440)),
        ((4096, 2048), (2880, 1440)),
        ((2000, 4096), (1440, 2949)),
        ((4096, 300), (4096, 300)),  # its shorter side is below the bound already
        ((512, 512), (512, 512)),
    ],
)
def test_large_references_are_stored_shrunk(size: tuple[int, int], stored: tuple[int, int]) -> None:
    image = Image.new("RGBA", size, (10, 200, 30, 255))
    out = decode_reference(encoded(image, compress_level=1))
    assert out.mode == "RGB" and out.size == stored
    assert min(out.size) <= max(STORED_MIN_SIDE, min(size))
    assert out.getpixel((out.width // 2, out.height // 2)) == (10, 200, 30)


def test_jpeg_is_decoded_at_a_reduced_scale_and_turned_upright() -> None:
    image = Image.new("RGB", (4096, 2048), (200, 40, 40))
    image.paste((40, 40, 200), (0, 0, 2048, 2048))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = decode_reference(encoded(image, "JPEG", quality=90, exif=exif.tobytes()))
    assert out.size == (1440, 2880)  # upright: taller than wide
    r, _, b = out.getpixel((720, 200))
    assert b > 150 and r < 100  # the top of the upright image is the file's left half


def test_palette_and_grey_references_become_rgb() -> None:
    for mode in ("P", "L", "LA", "I;16"):
        out = decode_reference(encoded(Image.new(mode, (3000, 3000)), compress_level=1))
        assert out.mode == "RGB" and out.size == (1440, 1440), mode


def test_at_most_n_decodes_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    active, peak = 0, 0
    lock = threading.Lock()

    def slow(image: Image.Image) -> bytes:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return b"png"

    monkeypatch.setattr(reference, "_bounded_png", slow)
    data = encoded(Image.new("RGB", (300, 300)))
    for limit in (1, 2):
        peak = 0
        decoder = ReferenceDecoder(limit)
        with ThreadPoolExecutor(8) as callers:
            assert list(callers.map(decoder.stored_png, [data] * 8)) == [b"png"] * 8
        assert peak == limit
    with pytest.raises(InvalidParameter):  # header checks come before the queue
        ReferenceDecoder(1).stored_png(png_header_only(100, 100))
