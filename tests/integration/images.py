"""Helpers to fetch and compare result images."""

from __future__ import annotations

import httpx
import numpy as np
from PIL import Image

from tests.integration.api_client import png_of


def fetch_png(url: str) -> Image.Image:
    """The PNG at a result URL, fetched as a client would (a real URL)."""
    return png_of(httpx.get(url, timeout=60))


def max_abs_diff(a: Image.Image, b: Image.Image) -> int:
    """Largest per-channel difference, 0..255."""
    assert a.size == b.size
    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    return int(np.abs(x - y).max())


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    x = np.asarray(a.convert("RGB"), dtype=np.float32)
    y = np.asarray(b.convert("RGB"), dtype=np.float32)
    return float(np.abs(x - y).mean())
