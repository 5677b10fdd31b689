"""The invisible watermark: a fixed 64-bit payload in the image's chroma, found again after
JPEG q80 and a 50% downscale.

The scheme is invisible-watermark's `dwtDctSvd` (design/parts-checked.md: its default `dwtDct`
did not survive JPEG q80): a Haar DWT of the U channel, then in every 4x4 block of the
approximation band (an 8x8 block of pixels) the largest singular value of the block's DCT is
quantised so that its remainder modulo SCALE says one payload bit; bits repeat over the image
and a decoder votes per bit. Marks are readable by the stock package
(`WatermarkDecoder("bytes", 64).decode(bgr, "dwtDctSvd")`).

`_Embed` subclasses the package's EmbedDwtDctSvd with the same arithmetic on all blocks at once
(numpy's batched SVD) instead of a Python loop per block: 0.13 s instead of 0.75 s per
1024x1024 frame; tests check it against the package's per-block code. Its `encode` also rounds
and clips the new chroma, where the package's truncates it into uint8 and wraps around
(saturated or noisy pixels came out with errors of 255), and puts the detail bands back in
their own order (the package swaps horizontal and vertical detail on the way back).

The package's pip metadata pulls opencv-python (with GUI) and torch, so scripts/setup.sh
installs it with --no-deps beside opencv-python-headless and PyWavelets; importing it imports
torch, so detection (`imagesynth inspect`) does without it: it needs only opencv and PyWavelets.
Without them, `available()` is False and embedding or detecting raises LabelError saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagesynth.labels import LabelError

PAYLOAD = b"imgsynth"  # 64 bits, 36 of them ones: no flat or striped image decodes to it
BITS = np.unpackbits(np.frombuffer(PAYLOAD, dtype=np.uint8))
SCALE = 36.0  # the package's default strength for the U channel
BLOCK = 4
# A decode counts as the mark with at most this many of the 64 bits wrong. An unmarked image
# reads as coin flips (about 32 wrong); P(<= 8 wrong by chance) = 3e-10. After JPEG q80 plus a
# 50% downscale, marked smooth images read with 0-3 wrong.
MAX_BIT_ERRORS = 8
MIN_PIXELS = 256 * 256  # the package refuses smaller images
# inspect tries the file as it is, then at twice its size (a 50% downscale that nobody scaled
# back up): the blocks only line up again at the original size.
DETECT_SCALES = (1.0, 2.0)

_INSTALL_HINT = (
    "the invisible watermark needs the Python packages invisible-watermark (installed with "
    "--no-deps), opencv-python-headless and PyWavelets; scripts/setup.sh installs them"
)


@lru_cache(maxsize=1)
def _dct_matrix() -> NDArray[np.float64]:
    """The orthonormal DCT-II for BLOCK samples: dct2(B) = D @ B @ D.T, as cv2.dct computes."""
    k = np.arange(BLOCK)[:, None]
    n = np.arange(BLOCK)[None, :]
    d = np.sqrt(2 / BLOCK) * np.cos(np.pi * (2 * n + 1) * k / (2 * BLOCK))
    d[0] /= np.sqrt(2)
    return d


def _blocks(frame: NDArray[np.float64]) -> tuple[NDArray[np.float64], int, int]:
    rows, cols = frame.shape[0] // BLOCK, frame.shape[1] // BLOCK
    view = frame[: rows * BLOCK, : cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK)
    return view.transpose(0, 2, 1, 3).reshape(rows * cols, BLOCK, BLOCK), rows, cols


def _codecs() -> tuple[Any, Any]:
    """cv2 and pywt, imported on first use (they are optional, and only workers and
    `imagesynth inspect` need them)."""
    try:
        import cv2
        import pywt
    except ImportError as exc:
        raise LabelError(f"{_INSTALL_HINT} ({exc})") from None
    return cv2, pywt


def _scores(bgr: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Per payload bit, the share of blocks that voted 1: the package's dwtDctSvd decode on
    all blocks at once. Needs no imwatermark (which would import torch: 2 s for inspect)."""
    cv2, pywt = _codecs()
    rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    approx, _ = pywt.dwt2(yuv[:rows, :cols, 1].astype(np.float64), "haar")
    blocks, _, _ = _blocks(approx)
    d = _dct_matrix()
    s = np.linalg.svd(d @ blocks @ d.T, compute_uv=False)
    votes = (s[:, 0] % SCALE) > SCALE * 0.5
    bit = np.arange(len(blocks)) % len(BITS)
    ones = np.bincount(bit, weights=votes, minlength=len(BITS))
    return np.asarray(ones / np.bincount(bit, minlength=len(BITS)), dtype=np.float64)


@lru_cache(maxsize=1)
def _embed_class() -> type[Any]:
    """_Embed, defined on first use so that importing this module does not import torch."""
    cv2, pywt = _codecs()
    try:
        from imwatermark.dwtDctSvd import EmbedDwtDctSvd
    except ImportError as exc:
        raise LabelError(f"{_INSTALL_HINT} ({exc})") from None

    class _Embed(EmbedDwtDctSvd):  # type: ignore[misc]
        """EmbedDwtDctSvd on the U channel, vectorised over blocks, with clipping."""

        def __init__(self) -> None:
            super().__init__(watermarks=[int(b) for b in BITS], wmLen=len(BITS), block=BLOCK)

        def encode(self, bgr: NDArray[np.uint8]) -> NDArray[np.uint8]:
            rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
            yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
            u = yuv[:rows, :cols, 1].astype(np.float64)
            approx, (horizontal, vertical, diagonal) = pywt.dwt2(u, "haar")
            self.encode_frame(approx, SCALE)
            u = pywt.idwt2((approx, (horizontal, vertical, diagonal)), "haar")
            yuv[:rows, :cols, 1] = np.clip(np.rint(u), 0, 255).astype(np.uint8)
            return np.asarray(cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR), dtype=np.uint8)

        def encode_frame(self, frame: NDArray[np.float64], scale: float) -> None:
            blocks, rows, cols = _blocks(frame)
            bits = np.asarray(self._watermarks)[np.arange(len(blocks)) % self._wmLen]
            d = _dct_matrix()
            u, s, vh = np.linalg.svd(d @ blocks @ d.T)
            s[:, 0] = (s[:, 0] // scale + 0.25 + 0.5 * bits) * scale
            marked = d.T @ (u @ (s[..., None] * vh)) @ d
            frame[: rows * BLOCK, : cols * BLOCK] = (
                marked.reshape(rows, cols, BLOCK, BLOCK)
                .transpose(0, 2, 1, 3)
                .reshape(rows * BLOCK, cols * BLOCK)
            )

    return _Embed


def available() -> bool:
    """Whether the invisible watermark's packages are installed (to embed it)."""
    try:
        _embed_class()
    except LabelError:
        return False
    return True


def _bgr(image: Image.Image) -> NDArray[np.uint8]:
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


def embed(image: Image.Image) -> Image.Image:
    """A copy of `image` (as RGB) carrying the mark. LabelError if the packages are missing."""
    if image.width * image.height < MIN_PIXELS:
        raise ValueError(f"a {image.width}x{image.height} image is too small to mark")
    marked = _embed_class()().encode(_bgr(image))
    return Image.fromarray(np.ascontiguousarray(marked[..., ::-1]))


@dataclass(frozen=True)
class Detection:
    """What a look for the mark found: the best of the tried scales."""

    found: bool
    bit_errors: int  # of len(BITS)
    scale: float  # the image was enlarged by this much before decoding


def detect(image: Image.Image) -> Detection:
    """Look for the mark in `image` as it is, then at twice its size. LabelError if opencv
    or PyWavelets is missing."""
    best: Detection | None = None
    for scale in DETECT_SCALES:
        w, h = round(image.width * scale), round(image.height * scale)
        if w * h < MIN_PIXELS:
            continue
        candidate = image if scale == 1.0 else image.resize((w, h), Image.Resampling.BICUBIC)
        got = _scores(_bgr(candidate)) > 0.5
        errors = int((got != BITS.astype(bool)).sum())
        if best is None or errors < best.bit_errors:
            best = Detection(errors <= MAX_BIT_ERRORS, errors, scale)
        if best.found:
            break
    return best or Detection(False, math.ceil(len(BITS) / 2), 1.0)
