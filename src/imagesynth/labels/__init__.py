"""Labels on generated images: the visible mark, the implicit AIGC label, the invisible mark.

visible.py draws the bottom-right text mark (`watermark=true`); aigc.py writes the implicit
label (XMP with the TC260 AIGC field, plus PNG text chunks with the generation parameters);
invisible.py embeds and detects the invisible watermark; labeler.py applies all three to one
result image; inspect.py reads them back from a file (`imagesynth inspect`).
"""

from __future__ import annotations

from imagesynth.errors import ImageSynthError


class LabelError(ImageSynthError):
    """A part needed to label images is missing or broken."""
