"""What the diffusers engines share: device and dtype choice, loading a pipeline offline from a
folder, sizes, per-image generators and the step callback. torch and diffusers are imported
inside the functions, so importing this module stays cheap."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from imagesynth.engine.base import EngineSpec, GenerationBatch, PreviewCallback, StepCallback
from imagesynth.engine.diffusers.levers import apply_levers, check_offload
from imagesynth.engine.diffusers.previews import Unpack, first_frame, latent_previews

_DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str) -> str:
    """The torch device to run on: "auto" is "cuda" when a GPU is visible, else "cpu"."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def free_memory(device: str) -> int | None:
    """Bytes free on a CUDA device (torch.cuda.mem_get_info), None on the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def resolve_dtype(dtype: str, device: str, cuda_auto: str = "bfloat16") -> Any:
    """The torch dtype to load in: "auto" is `cuda_auto` on a GPU and float32 on the CPU."""
    import torch

    if dtype == "auto":
        dtype = cuda_auto if device.startswith("cuda") else "float32"
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(_DTYPES)}; got {dtype!r}")
    return getattr(torch, dtype)


def load_pipeline(pipeline_cls: Any, spec: EngineSpec, cuda_auto: str, **kwargs: Any) -> Any:
    """`pipeline_cls.from_pretrained` on the spec's device and dtype, with quiet logs and the
    spec's speed levers applied (engine/diffusers/levers.py).

    A weights value naming an existing folder is loaded from that folder by absolute path with
    the hub off; anything else is a hub id and may download.
    """
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device, cuda_auto)
    # Before the weights load: an offload that cannot work should not wait for 40 GB to read.
    check_offload(spec.levers.offload, device)
    quiet_logs()
    local = Path(spec.weights).expanduser()
    if local.is_dir():
        # A relative `org/name` path would be read as a hub id: always pass it absolute.
        # local_files_only keeps the load off the network without touching os.environ
        # (HF_HUB_OFFLINE is read once, at import, and other threads share the environment).
        pipe = pipeline_cls.from_pretrained(
            str(local.resolve()), dtype=dtype, local_files_only=True, **kwargs
        )
    else:
        pipe = pipeline_cls.from_pretrained(spec.weights, dtype=dtype, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return apply_levers(pipe, spec.levers, device)


def quiet_logs() -> None:
    """Errors only from transformers and diffusers, and none of their progress bars."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


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


def prompt_arguments(
    batch: GenerationBatch, negative: Callable[[str], str | None] = lambda text: text
) -> dict[str, Any]:
    """The pipeline's prompt, negative_prompt and num_images_per_prompt for `batch`.

    `negative` maps a negative prompt to what the family passes (None: none at all). One
    prompt for every image stays one prompt with num_images_per_prompt (its text is encoded
    once); a batch of several tasks' prompts passes one prompt per image."""
    if not batch.prompts and not batch.negative_prompts:
        return {
            "prompt": batch.prompt,
            "negative_prompt": negative(batch.negative_prompt),
            "num_images_per_prompt": len(batch.seeds),
        }
    count = len(batch.seeds)
    prompts = list(batch.prompts or (batch.prompt,) * count)
    negatives = [negative(t) for t in batch.negative_prompts or (batch.negative_prompt,) * count]
    return {
        "prompt": prompts,
        # A list may not mix None with text: "" is what every pipeline takes None for.
        "negative_prompt": (
            None if all(n is None for n in negatives) else [n or "" for n in negatives]
        ),
        "num_images_per_prompt": 1,
    }


def cpu_generators(seeds: tuple[int, ...]) -> list[Any]:
    """One CPU generator per image, so image i depends only on seeds[i], on any device."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def step_callback(
    on_step: StepCallback,
    batch: GenerationBatch,
    on_preview: PreviewCallback | None = None,
    unpack: Unpack = first_frame,
) -> Callable[..., dict[str, Any]]:
    """A diffusers `callback_on_step_end` that reports (steps_done, steps) to `on_step` and,
    after the batch's preview steps, previews of the latents (laid out by `unpack`) to
    `on_preview`."""
    wanted = set(batch.preview_steps) if on_preview is not None else set()

    def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        done = i + 1
        if on_preview is not None and done in wanted and "latents" in tensors:
            on_preview(done, latent_previews(tensors["latents"], unpack))
        on_step(done, batch.steps)
        return {}

    return callback
