"""What every pipeline family offers the worker: load once, then generate batches.

Adapters are the only code that imports torch and diffusers, and they import them lazily, so
the API process stays small and starts fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from PIL import Image

Family = Literal["qwen-image", "wan", "stable-diffusion"]
FAMILIES: tuple[Family, ...] = ("qwen-image", "wan", "stable-diffusion")

# Called after each denoising step with (steps_done, steps_total). It may raise to abort the
# call; the adapter lets the exception propagate and stays usable for the next call.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class EngineSpec:
    """Where a pipeline's weights are and how to run them.

    weights: an absolute local folder (a diffusers `save_pretrained` layout) or a hub id.
    device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    dtype: "auto" (bf16 on CUDA, fp16 for Stable Diffusion on CUDA, fp32 on CPU), "float32",
    "float16" or "bfloat16".
    """

    family: Family
    weights: str
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class GenerationBatch:
    """One pipeline call: images i = 0..len(seeds)-1 each use their own seed."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    seeds: tuple[int, ...]
    steps: int
    guidance: float


class Adapter(Protocol):
    """One loaded pipeline. Not thread-safe: the caller serialises `generate` calls."""

    spec: EngineSpec

    def load(self) -> None:
        """Load the weights onto the device. Called once, before any `generate`."""

    def generate(self, batch: GenerationBatch, on_step: StepCallback) -> list[Image.Image]:
        """Run one call. Returns exactly len(batch.seeds) RGB images of exactly
        batch.width x batch.height pixels, in seed order."""
        ...
