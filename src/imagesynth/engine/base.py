"""The engine port: what the worker asks of whatever makes the images.

An engine is found by (backend, family) in engine/registry.py; `diffusers` (in-process
Hugging Face pipelines, engine/diffusers/) is the one backend so far. Engines are the only
code that imports torch and diffusers, and they import them lazily. This package imports
nothing of the service (no api, tasks, accounts, storage, worker): the import contracts in
pyproject.toml hold it to that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from imagesynth.domain import Backend, Cache, Family, Offload, SchedulerValue
from imagesynth.errors import FailureCode

# Called after each denoising step with (steps_done, steps_total). It may raise to abort the
# call; the adapter lets the exception propagate and stays usable for the next call.
StepCallback = Callable[[int, int], None]
# Called after each step in GenerationBatch.preview_steps with (steps_done, previews): one small
# RGB picture per image of the call, projected from its latents (no VAE decode). It may raise,
# as on_step may.
PreviewCallback = Callable[[int, list[Image.Image]], None]


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
class Levers:
    """Speed levers for real GPUs, applied once at load (docs/gpu-levers.md). The defaults
    change nothing.

    compile: torch.compile the denoiser's repeated blocks (regional compilation).
    distill_lora: a step-distilled LoRA (a .safetensors file on this machine), fused into the
    weights at distill_lora_scale, so that every call runs distilled.
    scheduler: (setting, value) pairs that replace the pipeline scheduler's own settings, e.g.
    the ones a distilled LoRA was trained with.
    offload: "model" or "sequential": diffusers' CPU offload onto the spec's accelerator
    instead of moving the whole pipeline there (for GPUs too small to hold it).
    attention: a diffusers attention backend for the denoiser ("flash", "sage", ...), or
    "default" for the process's own.
    cache: "first-block": diffusers' First Block Cache on the denoiser, which skips the other
    blocks of a step when the first block's output changed less than cache_threshold.
    """

    compile: bool = False
    distill_lora: str | None = None
    distill_lora_scale: float = 1.0
    scheduler: tuple[tuple[str, SchedulerValue], ...] = ()
    offload: Offload = "none"
    attention: str = "default"
    cache: Cache = "none"
    cache_threshold: float = 0.05


@dataclass(frozen=True)
class RemoteEndpoint:
    """A server that speaks the OpenAI Images API (backend "openai-images").

    endpoint: its base URL, ".../v1". model: the name it serves. api_key: sent as Bearer.
    timeout: seconds one request may take. retries: how often a failed request is retried.
    seed_offsets: whether image i of a request with n > 1 gets seed + i there.
    """

    endpoint: str
    model: str
    api_key: str | None = None
    timeout: float = 600.0
    retries: int = 4
    seed_offsets: bool = False


class EngineFailure(Exception):
    """A call failed in a way the task should tell: its failure code and what happened."""

    def __init__(self, code: FailureCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class EngineSpec:
    """Where a pipeline's weights are and how to run them.

    weights: an absolute local folder (a diffusers `save_pretrained` layout) or a hub id.
    device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    dtype: "auto" (bf16 on CUDA, fp16 for Stable Diffusion on CUDA, fp32 on CPU), "float32",
    "float16" or "bfloat16".
    ip_adapter: an image-prompt adapter loaded beside the pipeline (Stable Diffusion only).
    loras: LoRAs loaded once beside the pipeline, each used only by the calls that name it.
    levers: speed levers applied at load.
    """

    family: Family
    weights: str
    backend: Backend = "diffusers"
    device: str = "auto"
    dtype: str = "auto"
    ip_adapter: IPAdapterWeights | None = None
    loras: tuple[LoraWeights, ...] = ()
    levers: Levers = Levers()
    remote: RemoteEndpoint | None = None  # backend "openai-images" only


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
    # A call that serves several tasks (the worker's batches): image i's own prompts.
    # Empty: every image uses `prompt` and `negative_prompt`.
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    # After which denoising steps (1-based) `on_preview` gets previews; needs the engine's
    # `previews` capability.
    preview_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("prompts", "negative_prompts"):
            given = getattr(self, name)
            if given and len(given) != len(self.seeds):
                raise ValueError(f"{name} must give one per seed ({len(self.seeds)})")


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do beyond making images.

    progress: it calls `on_step` after each denoising step, so a task shows its progress.
    previews: it calls `on_preview` at the batch's preview_steps with cheap previews.
    cancel: an exception raised from `on_step` stops the call, so a cancelled (or handed
    back) task stops at its next step; without it the worker waits for the call to end and
    then discards its images.
    """

    progress: bool = True
    cancel: bool = True
    previews: bool = False


class Engine(Protocol):
    """One loaded model. Not thread-safe: the caller serialises `generate` calls."""

    spec: EngineSpec
    capabilities: Capabilities

    def load(self) -> None:
        """Load the weights onto the device. Called once, before any `generate`."""

    def generate(
        self,
        batch: GenerationBatch,
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        """Run one call. Returns exactly len(batch.seeds) RGB images of exactly
        batch.width x batch.height pixels, in seed order. Calls `on_step` (and, given one,
        `on_preview`) as its capabilities say; an exception from either propagates and the
        engine stays usable."""
        ...
