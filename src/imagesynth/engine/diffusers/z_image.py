"""Z-Image (ZImagePipeline): Tongyi-MAI/Z-Image-Turbo and its demo weights.

Z-Image-Turbo is step-distilled: its real weights want ~8-9 steps and no classifier-free
guidance, which the catalog's defaults say (steps 9, guidance 0).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from imagesynth.engine.base import (
    Capabilities,
    EngineSpec,
    GenerationBatch,
    PreviewCallback,
    StepCallback,
)
from imagesynth.engine.diffusers.pipelines import (
    cpu_generators,
    fit,
    load_pipeline,
    prompt_arguments,
    run_size,
    step_callback,
)

# The pipeline pads every prompt (in its chat template) to this many tokens and cuts it there:
# ZImagePipeline's own default. Not much more would fit: the real transformer's rotary table
# has 1024 positions on the axis where the caption's tokens come before the image.
MAX_SEQUENCE_LENGTH = 512


def zimage_guidance(guidance: float) -> float:
    """ZImagePipeline's guidance_scale for the service's `guidance`.

    The service's guidance is the usual classifier-free guidance scale s, as for the other
    families (neg + s * (pos - neg); s <= 1 is no guidance). ZImagePipeline computes
    pos + w * (pos - neg) and guides whenever w > 0, so w = s - 1: the catalog's 0 (or 1)
    runs Z-Image-Turbo without guidance, as its weights want.
    """
    return max(guidance - 1.0, 0.0)


class ZImageEngine:
    """Text to image with a ZImagePipeline folder or hub id."""

    capabilities = Capabilities(progress=True, cancel=True, previews=True)

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._pipe: Any = None

    def load(self) -> None:
        from diffusers import ZImagePipeline

        self._pipe = load_pipeline(ZImagePipeline, self.spec, cuda_auto="bfloat16")

    def generate(
        self,
        batch: GenerationBatch,
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        import torch

        pipe = self._pipe
        if pipe is None:
            raise RuntimeError("load() first")
        # Latents are 2x2 patches for the transformer: the pipeline refuses any size that is
        # not a multiple of twice the VAE factor (16 for the real 8x VAE).
        width, height = run_size(batch.width, batch.height, pipe.vae_scale_factor * 2)
        scale = zimage_guidance(batch.guidance)
        with torch.inference_mode():
            out = pipe(
                # Without guidance the pipeline never encodes a negative prompt; with it, an
                # empty one is its own default.
                **prompt_arguments(batch, lambda text: text if scale > 0 else None),
                guidance_scale=scale,
                width=width,
                height=height,
                num_inference_steps=batch.steps,
                generator=cpu_generators(batch.seeds),
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                output_type="pil",
                callback_on_step_end=step_callback(on_step, batch, on_preview),
            )
        return [fit(image, batch.width, batch.height) for image in out.images]
