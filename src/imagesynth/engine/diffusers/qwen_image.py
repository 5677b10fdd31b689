"""Qwen-Image (QwenImagePipeline): Qwen/Qwen-Image and its demo weights."""

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


class QwenImageEngine:
    """Text to image with a QwenImagePipeline folder or hub id."""

    capabilities = Capabilities(progress=True, cancel=True, previews=True)

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._pipe: Any = None

    def load(self) -> None:
        from diffusers import QwenImagePipeline

        self._pipe = load_pipeline(QwenImagePipeline, self.spec, cuda_auto="bfloat16")

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
        # Latents are 2x2-packed: the pipeline rounds sizes down to 2x the VAE factor.
        width, height = run_size(batch.width, batch.height, pipe.vae_scale_factor * 2)
        # true CFG runs only with a negative prompt; " " is the usual empty one.
        cfg = batch.guidance > 1
        with torch.inference_mode():
            out = pipe(
                **prompt_arguments(batch, lambda text: (text or " ") if cfg else None),
                true_cfg_scale=batch.guidance if cfg else 1.0,
                width=width,
                height=height,
                num_inference_steps=batch.steps,
                generator=cpu_generators(batch.seeds),
                output_type="pil",
                callback_on_step_end=step_callback(
                    on_step,
                    batch,
                    on_preview,
                    # 2x2-packed (B, h*w/4, 4C) -> (B, C, h, w): the pipeline's own unpacking.
                    lambda packed: pipe._unpack_latents(
                        packed, height, width, pipe.vae_scale_factor
                    )[:, :, 0],
                ),
            )
        return [fit(image, batch.width, batch.height) for image in out.images]
