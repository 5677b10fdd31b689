"""Value types every layer shares: pipeline families and backends, task statuses, sizes and
validated generation parameters.

This module imports nothing of the service, so anything may import it (the import contracts
in pyproject.toml keep it that way; see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

Family = Literal["qwen-image", "wan", "stable-diffusion", "z-image"]
FAMILIES: tuple[Family, ...] = ("qwen-image", "wan", "stable-diffusion", "z-image")

# How a model's images are made: the engine backend a catalog entry names (`backend = ...`).
# diffusers: in-process Hugging Face pipelines; openai-images: a server that speaks the OpenAI
# Images API (SGLang-Diffusion, vLLM-Omni, LocalAI, another imagesynth).
Backend = Literal["diffusers", "openai-images"]
BACKENDS: tuple[Backend, ...] = ("diffusers", "openai-images")

# GPU speed levers a catalog entry can pull, applied by the engine at load (docs/gpu-levers.md).
# offload: where the weights live between uses; "none" keeps the whole pipeline on the device.
Offload = Literal["none", "model", "sequential"]
OFFLOADS: tuple[Offload, ...] = ("none", "model", "sequential")
# cache: reuse of the denoiser's work between steps; "first-block" is diffusers' First Block Cache.
Cache = Literal["none", "first-block"]
CACHES: tuple[Cache, ...] = ("none", "first-block")
# A scheduler setting as the catalog gives it; None is TOML's missing null (written "none").
SchedulerValue = str | int | float | bool | None

SEED_MAX = 2_147_483_647

# How a result file is encoded (the OpenAI front's output_format; DashScope's results are PNG).
OutputFormat = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("png", "jpeg", "webp")
# Preview images a task may ask for while it runs (the OpenAI front's partial_images).
MAX_PARTIAL_IMAGES = 3


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)


def parse_digits(text: str, max_digits: int = 18) -> int:
    """'42' -> 42: ASCII digits only, at most `max_digits` of them; raises ValueError on
    anything else. Not str.isdigit() alone: it accepts '²' (which int() then refuses) and
    '١٢' or '１０２４' (which int() reads), and int() refuses more than 4300 digits."""
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        raise ValueError(text)
    return int(text)


def parse_size(text: str) -> tuple[int, int]:
    """'1024*768' -> (1024, 768); raises ValueError on anything else."""
    # Not a str at all: a catalog file can say `default_size = 1024`.
    if not isinstance(text, str):
        raise ValueError(text)
    w, sep, h = text.partition("*")
    if not sep:
        raise ValueError(text)
    return parse_digits(w, max_digits=6), parse_digits(h, max_digits=6)


@dataclass(frozen=True)
class GenerationParams:
    """Validated generation parameters: every default already filled in."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    n: int
    seed: int
    steps: int
    guidance: float
    prompt_extend: bool
    watermark: bool
    style: str | None = None
    # wanx-v1 reference image: the stored (validated, PNG) copy, how close to stay to it
    # (0..1, 1 = closest) and whether to follow its content (repaint) or its style (refonly).
    ref_image_key: str | None = None
    ref_strength: float | None = None
    ref_mode: str | None = None
    # How the results are encoded: format and, for jpeg/webp, quality 0..100 (None: 100).
    output_format: OutputFormat = "png"
    output_compression: int | None = None
    # Previews to make while denoising (0..MAX_PARTIAL_IMAGES), spread evenly over the steps.
    partial_images: int = 0
    # Who the caller says the end user is (the OpenAI front's `user`), kept with the task.
    user: str | None = None

    @property
    def preview_steps(self) -> tuple[int, ...]:
        """The denoising steps after which a preview is made: partial_images of them, evenly
        spread, the last one before the final step (whose image is the result itself)."""
        k = min(self.partial_images, max(self.steps - 1, 0))
        return tuple(sorted({max(1, (j + 1) * self.steps // (k + 1)) for j in range(k)}))

    @property
    def seeds(self) -> tuple[int, ...]:
        """Image i's seed: seed + i, as on DashScope."""
        return tuple(self.seed + i for i in range(self.n))

    @property
    def batch_key(self) -> str | None:
        """What tasks must share to run in one pipeline call (size, steps, guidance, style,
        which switches LoRAs); None for a task that never shares one (a reference image
        drives its whole call)."""
        if self.ref_image_key is not None or self.ref_mode is not None:
            return None
        return f"{self.width}*{self.height}/{self.steps}/{self.guidance!r}/{self.style or ''}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationParams:
        return cls(**data)
