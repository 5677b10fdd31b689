"""Read an image's labels back: the metadata label, the parameters, the invisible mark.

What `imagesynth inspect FILE` prints. Works on any image Pillow opens: our PNGs carry all of
it; a JPEG re-encoded from one usually keeps only the invisible mark.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imagesynth.labels import LabelError, invisible
from imagesynth.labels.aigc import AI_SOURCE_TYPE, LABEL_AI_GENERATED, ReadLabel, read_label

LABEL_MEANINGS = {"1": "AI-generated", "2": "possibly AI-generated", "3": "suspected AI-generated"}


@dataclass(frozen=True)
class Report:
    path: str
    format: str | None
    width: int
    height: int
    label: ReadLabel
    detection: invisible.Detection | None  # None: not looked for (see invisible_error)
    invisible_error: str | None = None

    @property
    def ai_generated(self) -> bool:
        """Whether any label says AI-generated (metadata or the invisible mark)."""
        aigc = self.label.aigc or {}
        return (
            aigc.get("Label") == LABEL_AI_GENERATED
            or self.label.digital_source_type == AI_SOURCE_TYPE
            or (self.detection is not None and self.detection.found)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "size": f"{self.width}*{self.height}",
            "ai_generated": self.ai_generated,
            "aigc": self.label.aigc,
            "aigc_sources": list(self.label.aigc_sources),
            "digital_source_type": self.label.digital_source_type,
            "parameters": self.label.parameters,
            "invisible_watermark": None if self.detection is None else asdict(self.detection),
            "invisible_watermark_error": self.invisible_error,
        }

    def to_text(self) -> str:
        lines = [f"{self.path}: {self.format or 'image'} {self.width}x{self.height}"]
        aigc = self.label.aigc
        if aigc is None:
            lines.append("AIGC label: none")
        else:
            meaning = LABEL_MEANINGS.get(str(aigc.get("Label")), "unknown label value")
            lines.append(
                f"AIGC label: Label={aigc.get('Label')} ({meaning}), "
                f"in {', '.join(self.label.aigc_sources)}"
            )
            lines += [f"  {k}: {v}" for k, v in aigc.items() if k != "Label" and v != ""]
        if self.label.digital_source_type:
            lines.append(f"IPTC digital source type: {self.label.digital_source_type}")
        if self.label.parameters is None:
            lines.append("parameters: none")
        else:
            lines.append("parameters:")
            lines += [
                f"  {k}: {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                for k, v in self.label.parameters.items()
            ]
        lines.append(f"invisible watermark: {self._invisible_text()}")
        return "\n".join(lines)

    def _invisible_text(self) -> str:
        found = self.detection
        if found is None:
            return f"not checked ({self.invisible_error})"
        bits = len(invisible.BITS)
        where = "" if found.scale == 1.0 else f", read at {found.scale:g}x the file's size"
        state = "present" if found.found else "absent"
        return f"{state} ({found.bit_errors}/{bits} payload bits differ{where})"


def inspect_file(path: Path, *, check_invisible: bool = True) -> Report:
    """Read `path`'s labels. OSError / PIL.UnidentifiedImageError if it is not an image."""
    with Image.open(path) as image:
        image.load()
        label = read_label(image.info)
        detection: invisible.Detection | None = None
        error: str | None = None
        if not check_invisible:
            error = "skipped"
        else:
            try:
                detection = invisible.detect(image)
            except LabelError as exc:
                error = str(exc)
        return Report(
            path=str(path),
            format=image.format,
            width=image.width,
            height=image.height,
            label=label,
            detection=detection,
            invisible_error=error,
        )
