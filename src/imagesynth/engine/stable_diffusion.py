"""Stable Diffusion 1.x / 2.x (StableDiffusionPipeline)."""

from __future__ import annotations

import math
from typing import Any

from PIL import Image, ImageOps

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
        self._img2img_pipe: Any = None

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

    def _img2img(self) -> Any:
        if self._img2img_pipe is None:
            from diffusers import StableDiffusionImg2ImgPipeline

            # Shares every weight with the text-to-image pipeline: no second copy in memory.
            self._img2img_pipe = StableDiffusionImg2ImgPipeline.from_pipe(self._pipe)
            self._img2img_pipe.set_progress_bar_config(disable=True)
        return self._img2img_pipe

    def generate(self, batch: GenerationBatch, on_step: StepCallback) -> list[Image.Image]:
        import torch

        pipe = self._pipe
        if pipe is None:
            raise RuntimeError("load() first")
        width, height = run_size(batch.width, batch.height, pipe.vae_scale_factor)
        if batch.init_image is not None:
            return self._generate_from_image(batch, on_step, width, height)
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

    def _generate_from_image(
        self, batch: GenerationBatch, on_step: StepCallback, width: int, height: int
    ) -> list[Image.Image]:
        import torch

        assert batch.init_image is not None
        if not 0.0 < batch.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1]; got {batch.strength}")
        # diffusers runs int(num_inference_steps * strength) steps: ask for enough that
        # exactly batch.steps run, so a small strength never means zero steps (a crash).
        total = math.ceil(batch.steps / batch.strength)
        image = batch.init_image.convert("RGB")
        if image.size != (width, height):
            image = ImageOps.pad(image, (width, height), method=Image.Resampling.LANCZOS)
        with torch.inference_mode():
            out = self._img2img()(
                prompt=batch.prompt,
                negative_prompt=batch.negative_prompt or None,
                image=image,
                # +0.5: int(total * strength) must come out as batch.steps despite rounding.
                strength=min(1.0, (batch.steps + 0.5) / total),
                guidance_scale=batch.guidance,
                num_inference_steps=total,
                num_images_per_prompt=len(batch.seeds),
                generator=cpu_generators(batch.seeds),
                output_type="pil",
                callback_on_step_end=step_callback(on_step, batch.steps),
            )
        return [fit(image, batch.width, batch.height) for image in out.images]
