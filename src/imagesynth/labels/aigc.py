"""The implicit label: metadata saying the image is AI-generated, by whom, and how.

China's labelling rules (GB 45438-2025) ask generated images to carry, in their metadata, the
field `AIGC` with `Label` ("1": AI-generated), `ContentProducer` (the provider's name or code),
`ProduceID` (the content's number) and, for platforms that pass it on, `ContentPropagator` and
`PropagateID`; `ReservedCode1/2` are free for integrity data. It goes into XMP under the TC260
namespace; in a PNG the XMP packet is the iTXt chunk `XML:com.adobe.xmp`. The packet also says
IPTC's "trained algorithmic media", the AI mark that other readers (search engines, social
networks) look for.

Beside it, plain PNG text chunks: `AIGC` (the same JSON, for readers that skip XMP) and
`imagesynth` (JSON: model, task, times and the generation parameters of this image). Not
`parameters`: other tools read that key in the AUTOMATIC1111 text format, not JSON.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from imagesynth.storage.png import XMP_KEY

AIGC_KEY = "AIGC"
PARAMETERS_KEY = "imagesynth"
TC260_NS = "http://www.tc260.org.cn/ns/AIGC/1.0/"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
AI_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
LABEL_AI_GENERATED = "1"


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ImageLabel:
    """Everything written into one result image's metadata."""

    producer: str  # ContentProducer: the service (Settings.label_producer)
    task_id: str  # ProduceID
    model: str
    index: int  # which image of the task
    created_at: float  # the task's submission, epoch seconds
    generated_at: float  # when this image was labelled, epoch seconds
    prompt: str
    actual_prompt: str
    negative_prompt: str
    seed: int  # this image's seed (the task's seed + index)
    steps: int
    guidance: float
    width: int
    height: int
    style: str | None = None
    visible_mark: str | None = None  # the text drawn, if any
    invisible_mark: bool = False

    def aigc(self) -> dict[str, str]:
        return {
            "Label": LABEL_AI_GENERATED,
            "ContentProducer": self.producer,
            "ProduceID": self.task_id,
            "ReservedCode1": "",
            "ContentPropagator": "",
            "PropagateID": "",
            "ReservedCode2": "",
        }

    def parameters(self) -> dict[str, Any]:
        return {
            "service": self.producer,
            "model": self.model,
            "task_id": self.task_id,
            "image_index": self.index,
            "created_at": iso_time(self.created_at),
            "generated_at": iso_time(self.generated_at),
            "prompt": self.prompt,
            "actual_prompt": self.actual_prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "size": f"{self.width}*{self.height}",
            "style": self.style,
            "visible_watermark": self.visible_mark,
            "invisible_watermark": self.invisible_mark,
        }

    def xmp(self) -> str:
        aigc = escape(json.dumps(self.aigc(), ensure_ascii=False))
        created = iso_time(self.created_at)
        tool = f"{escape(self.producer)} ({escape(self.model)})"
        return (
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
            '  <rdf:Description rdf:about=""\n'
            f'    xmlns:TC260="{TC260_NS}"\n'
            f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NS}"\n'
            f'    xmlns:xmp="{XMP_NS}">\n'
            f"   <TC260:AIGC>{aigc}</TC260:AIGC>\n"
            f"   <Iptc4xmpExt:DigitalSourceType>{AI_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>\n"
            f"   <xmp:CreatorTool>{tool}</xmp:CreatorTool>\n"
            f"   <xmp:CreateDate>{created}</xmp:CreateDate>\n"
            "  </rdf:Description>\n"
            " </rdf:RDF>\n"
            "</x:xmpmeta>\n"
            '<?xpacket end="r"?>'
        )

    def text_chunks(self) -> dict[str, str]:
        """The PNG text chunks besides XMP."""
        return {
            AIGC_KEY: json.dumps({"AIGC": self.aigc()}, ensure_ascii=False),
            PARAMETERS_KEY: json.dumps(self.parameters(), ensure_ascii=False),
        }


@dataclass(frozen=True)
class ReadLabel:
    """What a file's metadata says, as far as it says anything."""

    aigc: dict[str, Any] | None  # the TC260 AIGC fields
    aigc_sources: tuple[str, ...]  # where they were found: "XMP", "PNG text AIGC"
    digital_source_type: str | None
    parameters: dict[str, Any] | None


def _xmp_text(info: Mapping[Any, Any]) -> str | None:
    raw = info.get(XMP_KEY, info.get("xmp"))  # PNG: the iTXt chunk; JPEG (APP1): "xmp"
    if raw is None:
        return None
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return str(raw)


def _parse_xmp(text: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        root = ET.fromstring(text.strip().lstrip("\ufeff"))
    except ET.ParseError:
        return None, None
    aigc: dict[str, Any] | None = None
    source: str | None = None
    for element in root.iter():
        if element.tag == f"{{{TC260_NS}}}AIGC" and element.text:
            aigc = _json_object(element.text)
        elif element.tag == f"{{{IPTC_EXT_NS}}}DigitalSourceType":
            source = (element.text or element.get(f"{{{RDF_NS}}}resource") or "").strip()
    for element in root.iter(f"{{{RDF_NS}}}Description"):  # attribute form of the fields
        if aigc is None and f"{{{TC260_NS}}}AIGC" in element.attrib:
            aigc = _json_object(element.attrib[f"{{{TC260_NS}}}AIGC"])
        if source is None and f"{{{IPTC_EXT_NS}}}DigitalSourceType" in element.attrib:
            source = element.attrib[f"{{{IPTC_EXT_NS}}}DigitalSourceType"]
    return aigc, source


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_label(info: Mapping[Any, Any]) -> ReadLabel:
    """The label in a Pillow image's `info` (PNG text chunks, a JPEG's XMP)."""
    aigc: dict[str, Any] | None = None
    sources: list[str] = []
    digital_source_type: str | None = None
    xmp = _xmp_text(info)
    if xmp is not None:
        aigc, digital_source_type = _parse_xmp(xmp)
        if aigc is not None:
            sources.append("XMP")
    text = info.get(AIGC_KEY)
    if isinstance(text, str):
        chunk = _json_object(text)
        fields = chunk.get("AIGC", chunk) if chunk is not None else None
        if isinstance(fields, dict):
            aigc = aigc or fields
            sources.append(f"PNG text {AIGC_KEY}")
    raw_parameters = info.get(PARAMETERS_KEY)
    parameters = _json_object(raw_parameters) if isinstance(raw_parameters, str) else None
    return ReadLabel(aigc, tuple(sources), digital_source_type, parameters)
