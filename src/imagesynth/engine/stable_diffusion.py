"""Stable Diffusion 1.x / 2.x (StableDiffusionPipeline)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from imagesynth.engine.base import (
    EngineSpec,
    GenerationBatch,
    StepCallback,
    cpu_generators,
    fit,
    load_pipeline,
    run_size,
    step_callback,
)


class StableDiffusionAdapter:
    """Text to image with a StableDiffusionPipeline folder or hub id.

    The pipeline's own safety checker is not loaded: it would blank images without telling
    the caller. Content checks belong to the service.
    """

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._pipe: Any = None

    def load(self) -> None:
        from diffusers import StableDiffusionPipeline

        self._pipe = load_pipeline(
            StableDiffusionPipeline,
            self.spec,
            cuda_auto="float16",
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def generate(self, batch: GenerationBatch, on_step: StepCallback) -> list[Image.Image]:
        import torch

        pipe = self._pipe
        if pipe is None:
            raise RuntimeError("load() first")
        width, height = run_size(batch.width, batch.height, pipe.vae_scale_factor)
        with torch.inference_mode():
            out = pipe(
                prompt=batch.prompt,
                negative_prompt=batch.negative_prompt or None,
                guidance_scale=batch.guidance,
                width=width,
                height=height,
                num_inference_steps=batch.steps,
                num_images_per_prompt=len(batch.seeds),
                generator=cpu_generators(batch.seeds),
                output_type="pil",
                callback_on_step_end=step_callback(on_step, batch.steps),
            )
        return [fit(image, batch.width, batch.height) for image in out.images]
