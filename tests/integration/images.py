"""Helpers to fetch and compare result images."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image


def fetch_png(url: str) -> Image.Image:
    r = httpx.get(url, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG"
    image.load()
    return image


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
