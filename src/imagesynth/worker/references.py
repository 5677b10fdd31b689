"""A wanx-v1 reference image as the engine takes it: an image-to-image start (repaint, or
refonly without an image-prompt adapter) or an image prompt (refonly with one)."""

from __future__ import annotations

import io

from PIL import Image

from imagesynth.inputs.reference import cover, load_bounded, style_only


class ReferenceMissing(FileNotFoundError):
    """The task's stored reference image is gone."""


def _open(data: bytes | None) -> Image.Image:
    if data is None:
        raise ReferenceMissing("the task's reference image is gone")
    # Stored references are already bounded; one stored before they were is bounded here,
    # so a worker never holds more than a bounded image per task either.
    return load_bounded(Image.open(io.BytesIO(data)))


def reference_start(
    data: bytes | None, width: int, height: int, mode: str | None, ref_strength: float
) -> tuple[Image.Image, float]:
    """The image-to-image start for a wanx-v1 reference, and how far to denoise from it.

    repaint: the reference itself; ref_strength 1.0 keeps closest (denoise 10%), 0.0 redraws
    almost everything (100%). refonly (no image-prompt adapter configured): the reference
    blurred until only its palette and light remain, denoised 50%..100%, so the result takes
    its colours and mood but not its content."""
    image = cover(_open(data), width, height)
    if mode == "refonly":
        return style_only(image), 1.0 - 0.5 * ref_strength
    return image, 1.0 - 0.9 * ref_strength


def reference_style(data: bytes | None, ref_strength: float) -> tuple[Image.Image, float]:
    """The image prompt for a wanx-v1 refonly reference where the model has an IP-Adapter, and
    the adapter's scale: 0.2 at ref_strength 0 (a hint of its look) up to 1.0 at ref_strength 1
    (as strongly as the adapter was trained to follow it). The image is generated from noise
    at the requested size, so the reference's layout does not carry over as it does in a
    repaint; the adapter's image encoder crops and scales the reference itself."""
    return _open(data), 0.2 + 0.8 * ref_strength
