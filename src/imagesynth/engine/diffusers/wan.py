"""Wan text-to-video pipelines (WanPipeline) used for still images: one frame per video.

Works with Wan 2.1 T2V, Wan 2.2 T2V A14B (two transformers) and Wan 2.2 TI2V-5B folders.
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


class WanEngine:
    """Text to image with a WanPipeline folder or hub id, at num_frames=1."""

    capabilities = Capabilities(progress=True, cancel=True, previews=True)

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._pipe: Any = None

    def load(self) -> None:
        from diffusers import WanPipeline

        self._pipe = load_pipeline(WanPipeline, self.spec, cuda_auto="bfloat16")

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
        # The transformer patchifies the latents: 16 for Wan 2.1 and 2.2 A14B, 32 for TI2V-5B.
        transformer = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        multiple = pipe.vae_scale_factor_spatial * transformer.config.patch_size[1]
        width, height = run_size(batch.width, batch.height, multiple)
        with torch.inference_mode():
            prompts = prompt_arguments(batch, lambda text: text or None)
            out = pipe(
                prompt=prompts["prompt"],
                negative_prompt=prompts["negative_prompt"],
                num_videos_per_prompt=prompts["num_images_per_prompt"],
                guidance_scale=batch.guidance,
                width=width,
                height=height,
                num_frames=1,
                num_inference_steps=batch.steps,
                generator=cpu_generators(batch.seeds),
                output_type="pil",
                callback_on_step_end=step_callback(on_step, batch, on_preview),
            )
        # .frames: one list of frames per video; the single frame is the image.
        return [fit(video[0], batch.width, batch.height) for video in out.frames]
