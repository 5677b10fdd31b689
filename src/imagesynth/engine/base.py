"""What every pipeline family offers the worker: load once, then generate batches.

Adapters are the only code that imports torch and diffusers, and they import them lazily, so
the API process stays small and starts fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

Family = Literal["qwen-image", "wan", "stable-diffusion"]
FAMILIES: tuple[Family, ...] = ("qwen-image", "wan", "stable-diffusion")

# Called after each denoising step with (steps_done, steps_total). It may raise to abort the
# call; the adapter lets the exception propagate and stays usable for the next call.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class IPAdapterWeights:
    """Where an image-prompt adapter (IP-Adapter) is: diffusers' `load_ip_adapter` arguments.

    path: an absolute local folder or a hub id; the weights file is path/subfolder/weight_name.
    image_encoder: the CLIP image encoder's folder, inside `subfolder` when it has no "/", else
    relative to `path`.
    """

    path: str
    weight_name: str
    subfolder: str = ""
    image_encoder: str = "image_encoder"


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA that a request can switch on by name (a wanx-v1 style), at `scale`."""

    name: str
    path: str  # a .safetensors file on this machine
    scale: float = 1.0


@dataclass(frozen=True)
class EngineSpec:
    """Where a pipeline's weights are and how to run them.

    weights: an absolute local folder (a diffusers `save_pretrained` layout) or a hub id.
    device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    dtype: "auto" (bf16 on CUDA, fp16 for Stable Diffusion on CUDA, fp32 on CPU), "float32",
    "float16" or "bfloat16".
    ip_adapter: an image-prompt adapter loaded beside the pipeline (Stable Diffusion only).
    loras: LoRAs loaded once beside the pipeline, each used only by the calls that name it.
    """

    family: Family
    weights: str
    device: str = "auto"
    dtype: str = "auto"
    ip_adapter: IPAdapterWeights | None = None
    loras: tuple[LoraWeights, ...] = ()


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
    # Image-to-image: start from this picture (already width x height) and denoise only
    # `strength` of the way (1.0 = from pure noise). `steps` stays the number of denoising
    # steps actually run, whatever the strength.
    init_image: Image.Image | None = None
    strength: float = 1.0
    # Image prompt (needs the spec's ip_adapter): generate from noise, steered towards this
    # picture's look by the adapter at `style_scale` (0 = not at all, 1 = as trained).
    style_image: Image.Image | None = None
    style_scale: float = 0.0
    # The name of one of the spec's `loras` to switch on for this call; None: no LoRA.
    lora: str | None = None


class Adapter(Protocol):
    """One loaded pipeline. Not thread-safe: the caller serialises `generate` calls."""

    spec: EngineSpec

    def load(self) -> None:
        """Load the weights onto the device. Called once, before any `generate`."""

    def generate(self, batch: GenerationBatch, on_step: StepCallback) -> list[Image.Image]:
        """Run one call. Returns exactly len(batch.seeds) RGB images of exactly
        batch.width x batch.height pixels, in seed order."""
        ...


# Helpers the family adapters share. They import torch and diffusers inside, so importing this
# module stays cheap.

_DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str) -> str:
    """The torch device to run on: "auto" is "cuda" when a GPU is visible, else "cpu"."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str, cuda_auto: str = "bfloat16") -> Any:
    """The torch dtype to load in: "auto" is `cuda_auto` on a GPU and float32 on the CPU."""
    import torch

    if dtype == "auto":
        dtype = cuda_auto if device.startswith("cuda") else "float32"
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(_DTYPES)}; got {dtype!r}")
    return getattr(torch, dtype)


def load_pipeline(pipeline_cls: Any, spec: EngineSpec, cuda_auto: str, **kwargs: Any) -> Any:
    """`pipeline_cls.from_pretrained` on the spec's device and dtype, with quiet logs.

    A weights value naming an existing folder is loaded from that folder by absolute path with
    the hub off; anything else is a hub id and may download.
    """
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device, cuda_auto)
    quiet_logs()
    local = Path(spec.weights).expanduser()
    if local.is_dir():
        # A relative `org/name` path would be read as a hub id: always pass it absolute.
        # huggingface_hub reads HF_HUB_OFFLINE once, at import: local_files_only is what
        # keeps a process that imported it earlier off the network.
        with hub_offline():
            pipe = pipeline_cls.from_pretrained(
                str(local.resolve()), dtype=dtype, local_files_only=True, **kwargs
            )
    else:
        pipe = pipeline_cls.from_pretrained(spec.weights, dtype=dtype, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def quiet_logs() -> None:
    """Errors only from transformers and diffusers, and none of their progress bars."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


@contextmanager
def hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the duration (restored afterwards)."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def run_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The size to generate at: each side rounded up to the model's multiple."""
    return -(-width // multiple) * multiple, -(-height // multiple) * multiple


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """A pipeline's output image as RGB, center-cropped from the run size to width x height."""
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    if left < 0 or top < 0:
        raise ValueError(f"pipeline returned {image.size}, smaller than {(width, height)}")
    return image.convert("RGB").crop((left, top, left + width, top + height))


def cpu_generators(seeds: tuple[int, ...]) -> list[Any]:
    """One CPU generator per image, so image i depends only on seeds[i], on any device."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def step_callback(on_step: StepCallback, steps: int) -> Callable[..., dict[str, Any]]:
    """A diffusers `callback_on_step_end` that reports (steps_done, steps) to `on_step`."""

    def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step(i + 1, steps)
        return {}

    return callback
