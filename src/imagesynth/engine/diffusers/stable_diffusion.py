"""Stable Diffusion 1.x / 2.x (StableDiffusionPipeline)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from imagesynth.engine.base import (
    Capabilities,
    EngineSpec,
    GenerationBatch,
    IPAdapterWeights,
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


class StableDiffusionEngine:
    """Text to image with a StableDiffusionPipeline folder or hub id.

    The pipeline's own safety checker is not loaded: it would blank images without telling
    the caller. Content checks belong to the service.

    With the spec's `ip_adapter`, an IP-Adapter is loaded into the UNet: a batch's
    `style_image` then steers the call at `style_scale`. Such a UNet needs image embeddings on
    every call, so calls without a style image get zero embeddings at scale 0, which the
    attention processors skip: the same images as without the adapter.

    The spec's `loras` (wanx-v1 styles) are loaded once, each under its own adapter name, and
    switched off; a batch's `lora` switches on that one, at its scale, for that call only.
    """

    capabilities = Capabilities(progress=True, cancel=True, previews=True)

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._pipe: Any = None
        self._img2img_pipe: Any = None
        self._embed_dim: int | None = None  # the image encoder's, when an IP-Adapter is loaded
        self._loras: dict[str, tuple[str, float]] = {}  # name -> (adapter name, scale)

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
        if self.spec.ip_adapter is not None:
            self._load_ip_adapter(self.spec.ip_adapter)
        if self.spec.loras:
            self._load_loras()

    def _load_ip_adapter(self, weights: IPAdapterWeights) -> None:
        local = Path(weights.path).expanduser()
        kwargs: dict[str, Any] = {
            "subfolder": weights.subfolder,
            "weight_name": weights.weight_name,
            "image_encoder_folder": weights.image_encoder,
        }
        if local.is_dir():
            # As in load_pipeline: absolute, and no hub.
            self._pipe.load_ip_adapter(str(local.resolve()), local_files_only=True, **kwargs)
        else:
            self._pipe.load_ip_adapter(weights.path, **kwargs)
        self._embed_dim = int(self._pipe.image_encoder.config.projection_dim)

    def _load_loras(self) -> None:
        from safetensors.torch import load_file

        for i, lora in enumerate(self.spec.loras):
            path = Path(lora.path)
            if not path.is_file():
                raise FileNotFoundError(f"LoRA of {lora.name}: no file {path}")
            # Read here and handed over as a state dict, so that diffusers never reads the
            # path as a hub id. Adapter names are ours: style names hold spaces and brackets.
            name = f"lora{i}"
            with warnings.catch_warnings():
                # peft warns when a model gets a second adapter: several is the point here.
                warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
                self._pipe.load_lora_weights(load_file(path), adapter_name=name)
            self._loras[lora.name] = (name, lora.scale)
        self._pipe.disable_lora()

    def _image_prompt(self, batch: GenerationBatch) -> dict[str, Any]:
        """The pipeline arguments for the batch's image prompt, with the adapter's scale set."""
        import torch

        pipe = self._pipe
        if self._embed_dim is None:
            if batch.style_image is not None:
                raise ValueError("a style image needs an IP-Adapter (the spec has none)")
            return {}
        if batch.style_image is not None:
            pipe.set_ip_adapter_scale(batch.style_scale)
            return {"ip_adapter_image": batch.style_image.convert("RGB")}
        pipe.set_ip_adapter_scale(0.0)
        # One embedding per image prompt; with classifier-free guidance the pipeline splits
        # the tensor into the unconditional and the conditional half.
        guided = batch.guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
        # The pipeline repeats the embedding per image of a prompt: a batch of several
        # prompts (one image each) needs one per prompt.
        prompts = len(batch.seeds) if batch.prompts else 1
        zeros = torch.zeros(
            prompts * (2 if guided else 1),
            1,
            self._embed_dim,
            dtype=pipe.unet.dtype,
            device=pipe.device,
        )
        return {"ip_adapter_image_embeds": [zeros]}

    def _switch_lora(self, batch: GenerationBatch) -> None:
        """Only the batch's LoRA on (at its scale), or none."""
        pipe = self._pipe
        if batch.lora is None:
            if self._loras:
                pipe.disable_lora()
            return
        if batch.lora not in self._loras:
            raise ValueError(f"no LoRA {batch.lora!r} is loaded")
        name, scale = self._loras[batch.lora]
        pipe.enable_lora()
        pipe.set_adapters([name], adapter_weights=[scale])

    def _img2img(self) -> Any:
        if self._img2img_pipe is None:
            from diffusers import StableDiffusionImg2ImgPipeline

            # Shares every weight with the text-to-image pipeline: no second copy in memory.
            self._img2img_pipe = StableDiffusionImg2ImgPipeline.from_pipe(self._pipe)
            self._img2img_pipe.set_progress_bar_config(disable=True)
        return self._img2img_pipe

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
        width, height = run_size(batch.width, batch.height, pipe.vae_scale_factor)
        if batch.init_image is not None:
            if batch.style_image is not None:
                raise ValueError("a batch takes an init image or a style image, not both")
            return self._generate_from_image(batch, on_step, on_preview, width, height)
        image_prompt = self._image_prompt(batch)
        self._switch_lora(batch)
        with torch.inference_mode():
            out = pipe(
                **image_prompt,
                **prompt_arguments(batch, lambda text: text or None),
                guidance_scale=batch.guidance,
                width=width,
                height=height,
                num_inference_steps=batch.steps,
                generator=cpu_generators(batch.seeds),
                output_type="pil",
                callback_on_step_end=step_callback(on_step, batch, on_preview),
            )
        return [fit(image, batch.width, batch.height) for image in out.images]

    def _generate_from_image(
        self,
        batch: GenerationBatch,
        on_step: StepCallback,
        on_preview: PreviewCallback | None,
        width: int,
        height: int,
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
        image_prompt = self._image_prompt(batch)
        self._switch_lora(batch)
        with torch.inference_mode():
            out = self._img2img()(
                **image_prompt,
                **prompt_arguments(batch, lambda text: text or None),
                image=image,
                # +0.5: int(total * strength) must come out as batch.steps despite rounding.
                strength=min(1.0, (batch.steps + 0.5) / total),
                guidance_scale=batch.guidance,
                num_inference_steps=total,
                generator=cpu_generators(batch.seeds),
                output_type="pil",
                callback_on_step_end=step_callback(on_step, batch, on_preview),
            )
        return [fit(image, batch.width, batch.height) for image in out.images]
