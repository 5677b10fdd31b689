"""Labels one result image: visible mark if asked, invisible mark if on, metadata always."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PIL import Image

from imagesynth.config import Settings
from imagesynth.labels import LabelError, invisible, visible
from imagesynth.labels.aigc import ImageLabel
from imagesynth.labels.font import font_path
from imagesynth.storage.png import encode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Labeler:
    """How a worker labels its images; built once from Settings (`from_settings`)."""

    producer: str = "imagesynth"
    invisible: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Labeler:
        """Checks up front that what the settings ask for is installed (LabelError if not)."""
        font_path()  # the visible mark's font: a declared dependency, so missing = broken
        wanted = settings.invisible_watermark
        if wanted is None:
            on = invisible.available()
            if not on:
                log.warning("invisible watermark off: its packages are not installed")
        elif wanted:
            if not invisible.available():
                raise LabelError(
                    "IMAGESYNTH_INVISIBLE_WATERMARK=true but the invisible watermark's packages "
                    "are not installed (scripts/setup.sh installs them)"
                )
            on = True
        else:
            on = False
        log.info(
            "labels: AIGC metadata by %r on every image; invisible watermark %s",
            settings.label_producer,
            "on" if on else "off",
        )
        return cls(producer=settings.label_producer, invisible=on)

    def apply(self, image: Image.Image, label: ImageLabel) -> Image.Image:
        """The image with the marks `label` says it carries (the visible one first, so the
        invisible one covers it too)."""
        if label.visible_mark:
            image = visible.draw_mark(image, label.visible_mark)
        if label.invisible_mark:
            image = invisible.embed(image)
        return image

    def encode(
        self, image: Image.Image, label: ImageLabel, fmt: str = "png", quality: int | None = None
    ) -> bytes:
        """The image with its marks and its label's metadata, as `fmt` bytes (PNG: text
        chunks and XMP; JPEG and WebP: XMP)."""
        return encode_image(
            self.apply(image, label), fmt, quality, label.text_chunks(), label.xmp()
        )
