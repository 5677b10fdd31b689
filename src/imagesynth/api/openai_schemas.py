"""The OpenAI Images API's request, as the `openai` SDK sends it, and the fields of the task it
becomes. OpenAI's names live here and in routes_openai.py only; docs/openai.md lists what each
parameter does here.

Unknown parameters are refused, as OpenAI refuses them; parameters of OpenAI's own models that
mean nothing here (moderation, style "vivid"/"natural", complexity) are accepted and ignored,
and values that cannot be honoured (a transparent background, gif output) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from imagesynth.catalog import ModelSpec
from imagesynth.domain import MAX_PARTIAL_IMAGES, OUTPUT_FORMATS, parse_digits
from imagesynth.errors import InvalidParameter

ResponseFormat = Literal["url", "b64_json"]
QUALITIES = ("low", "medium", "high", "auto", "standard", "hd", "xhigh", "max")
# dall-e-3's and the newest models' names for the three levels the catalog maps to steps.
_QUALITY_ALIASES = {"standard": "medium", "hd": "high", "xhigh": "high", "max": "high"}
_OPENAI_STYLES = ("vivid", "natural")  # dall-e-3's; a wanx-v1 style is passed on


class UnknownParameter(InvalidParameter):
    """Unknown parameter."""


class ImageGenerationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr | None = None
    model: StrictStr | None = None
    n: StrictInt | None = None
    size: StrictStr | None = None
    quality: StrictStr | None = None
    response_format: StrictStr | None = None
    output_format: StrictStr | None = None
    output_compression: StrictInt | None = None
    background: StrictStr | None = None
    moderation: StrictStr | None = None
    stream: StrictBool | None = None
    partial_images: StrictInt | None = None
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    style: StrictStr | None = None
    complexity: StrictStr | None = None
    frame_count: StrictInt | None = None
    frame_duration_ms: StrictInt | None = None
    svg: dict[str, Any] | None = None
    # imagesynth's own, sent through the SDK's extra_body.
    seed: StrictInt | None = None
    negative_prompt: StrictStr | None = None
    steps: StrictInt | None = None
    guidance: StrictFloat | StrictInt | None = None
    # vLLM-Omni's and SGLang-Diffusion's names for the same two (what imagesynth's remote
    # engine sends): a server in front of another imagesynth takes them too.
    num_inference_steps: StrictInt | None = None
    guidance_scale: StrictFloat | StrictInt | None = None
    prompt_extend: StrictBool | None = None
    watermark: StrictBool | None = None
    callback_url: StrictStr | None = None


@dataclass(frozen=True)
class ImageGeneration:
    """A parsed request: what the task is made of, and how the answer is shaped."""

    body: ImageGenerationBody
    stream: bool
    response_formats: tuple[ResponseFormat, ...]  # both when the request names neither
    quality: str  # as the reply names it: low, medium, high or auto
    output_format: str

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ImageGeneration:
        try:
            body = ImageGenerationBody.model_validate(raw)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else None
            if first["type"] == "extra_forbidden":
                raise UnknownParameter(f"Unknown parameter: '{name}'.", param=name) from None
            raise InvalidParameter(f"{name}: {first['msg']}", param=name) from None
        if not body.prompt or not body.prompt.strip():
            raise InvalidParameter("prompt: a non-empty prompt is required", param="prompt")
        quality = body.quality or "auto"
        if quality not in QUALITIES:
            raise InvalidParameter(
                f"quality must be one of {', '.join(QUALITIES)}; got {quality!r}",
                param="quality",
            )
        if body.response_format not in (None, "url", "b64_json"):
            raise InvalidParameter(
                f"response_format must be url or b64_json; got {body.response_format!r}",
                param="response_format",
            )
        if body.background not in (None, "auto", "opaque"):
            raise InvalidParameter(
                "background must be auto or opaque: these models make opaque images",
                param="background",
            )
        if body.frame_count not in (None, 1) or body.svg is not None:
            raise InvalidParameter("only still raster images are made here", param="frame_count")
        if body.moderation not in (None, "auto", "low"):
            raise InvalidParameter("moderation must be auto or low", param="moderation")
        if body.output_format not in (None, *OUTPUT_FORMATS):
            raise InvalidParameter(
                f"output_format must be one of {', '.join(OUTPUT_FORMATS)}; "
                f"got {body.output_format!r}",
                param="output_format",
            )
        if body.partial_images is not None and not (0 <= body.partial_images <= MAX_PARTIAL_IMAGES):
            raise InvalidParameter(
                f"partial_images must be in [0, {MAX_PARTIAL_IMAGES}]; got {body.partial_images}",
                param="partial_images",
            )
        formats: tuple[ResponseFormat, ...] = (
            ("url", "b64_json") if body.response_format is None else (body.response_format,)  # type: ignore[assignment]
        )
        return cls(
            body=body,
            stream=bool(body.stream),
            response_formats=formats,
            quality=_QUALITY_ALIASES.get(quality, quality),
            output_format=body.output_format or "png",
        )

    def task_fields(self, spec: ModelSpec) -> dict[str, Any]:
        """The fields ModelSpec.validate takes, for `spec`."""
        b = self.body
        steps = b.steps if b.steps is not None else b.num_inference_steps
        if steps is None and self.quality != "auto":
            steps = spec.steps_for_quality(self.quality)
        style = b.style if b.style not in _OPENAI_STYLES else None
        return {
            "prompt": b.prompt,
            "negative_prompt": b.negative_prompt,
            "size": catalog_size(b.size, spec),
            "n": 1 if b.n is None else b.n,
            "seed": b.seed,
            "steps": steps,
            "guidance": b.guidance if b.guidance is not None else b.guidance_scale,
            "prompt_extend": b.prompt_extend,
            "watermark": b.watermark,
            "style": style,
            "output_format": self.output_format,
            "output_compression": b.output_compression,
            "partial_images": (b.partial_images or 0) if self.stream else 0,
            "user": b.user or b.safety_identifier,
        }


def catalog_size(size: str | None, spec: ModelSpec) -> str | None:
    """'1024x1024' -> '1024*1024'; None or 'auto' -> the model's default. Anything else is a
    400 naming the model's sizes."""
    if size is None or size == "auto":
        return None
    w, sep, h = size.partition("x")
    try:
        if not sep:
            raise ValueError(size)
        width, height = parse_digits(w, max_digits=6), parse_digits(h, max_digits=6)
    except ValueError:
        raise InvalidParameter(
            f"size must be WIDTHxHEIGHT or auto; {allowed_sizes(spec)}; got {size!r}",
            param="size",
        ) from None
    text = f"{width}*{height}"
    if not spec.takes_size(text):
        raise InvalidParameter(f"size {size} is not supported: {allowed_sizes(spec)}", param="size")
    return text


def allowed_sizes(spec: ModelSpec) -> str:
    """What the model takes, in OpenAI's spelling."""
    if spec.sizes:
        return f"{spec.name} takes " + ", ".join(s.replace("*", "x") for s in spec.sizes)
    return f"{spec.name} takes {spec.size_rule().replace('*', 'x')}"


def openai_size(width: int, height: int) -> str:
    return f"{width}x{height}"


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorReply(BaseModel):
    """Documentation only: every refusal under /v1/ (api/openai_errors.py)."""

    error: OpenAIErrorDetail
