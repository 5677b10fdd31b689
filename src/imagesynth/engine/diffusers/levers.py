"""The speed levers of a catalog entry (engine.base.Levers), applied once to a freshly loaded
pipeline: a fused step-distilled LoRA and its scheduler settings, placement on the device or
CPU offload onto it, the attention backend, First Block Cache and torch.compile.

The order matters: weights change first (a LoRA is fused on the CPU, before any offload hook
sees the weights), then the pipeline is placed, then the denoiser gets its runtime settings,
and compilation comes last, so that it traces the attention backend and cache hooks it will run
with (torch.compile is lazy: nothing compiles before the first call).

Problems a catalog cannot see (the weights' own scheduler, the denoiser's depth, a device
"auto" that turns out to be the CPU) raise ValueError here, at load, naming the lever.
torch and diffusers are imported inside the functions.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from imagesynth.domain import Offload, SchedulerValue
from imagesynth.engine.base import Levers

DISTILL_ADAPTER = "distill"


def apply_levers(pipe: Any, levers: Levers, device: str) -> Any:
    """The pipeline with its levers pulled, on `device` (or offloaded onto it)."""
    check_offload(levers.offload, device)
    if levers.distill_lora is not None:
        fuse_distill_lora(pipe, levers.distill_lora, levers.distill_lora_scale)
    if levers.scheduler:
        override_scheduler(pipe, levers.scheduler)
    pipe = place(pipe, levers.offload, device)
    denoisers = denoisers_of(pipe)
    if levers.attention != "default":
        set_attention(denoisers, levers.attention)
    if levers.cache == "first-block":
        enable_first_block_cache(denoisers, levers.cache_threshold)
    if levers.compile:
        for denoiser in denoisers:
            # Regional compilation: the repeated transformer block is compiled once and its
            # code reused by every block, which cuts the cold start several times over for the
            # same speed-up as compiling the whole denoiser. fullgraph=False, because First
            # Block Cache decides per step in Python whether to skip the blocks (a graph break).
            denoiser.compile_repeated_blocks(fullgraph=False)
    return pipe


def denoisers_of(pipe: Any) -> list[Any]:
    """The models that run once per step: the transformer(s) or the UNet."""
    names = ("transformer", "transformer_2", "unet")
    return [model for name in names if (model := getattr(pipe, name, None)) is not None]


def check_offload(offload: Offload, device: str) -> None:
    if offload != "none" and device == "cpu":
        # diffusers would install its hooks and shuttle weights from the CPU to the CPU.
        raise ValueError(
            f'offload = "{offload}" needs an accelerator to offload onto, but the device is '
            'the CPU: set device = "cuda" (or "cuda:N") or offload = "none"'
        )


def place(pipe: Any, offload: Offload, device: str) -> Any:
    """The pipeline on `device`, or offloaded onto it: "model" moves each model there while it
    runs (text encoder, denoiser, VAE in turn); "sequential" moves each layer there while it
    runs, which needs the least device memory and is by far the slowest."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    return pipe


def fuse_distill_lora(pipe: Any, path: str, scale: float) -> None:
    """Fuse a step-distilled LoRA into the weights and drop its adapter layers: every call then
    runs distilled at no cost per step, and LoRAs loaded later (wanx-v1 styles) still work."""
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"distill_lora: no file {file}")
    if getattr(pipe, "transformer_2", None) is not None:
        # Wan 2.2 A14B's two experts are distilled by two LoRAs (high and low noise).
        raise ValueError(
            "distill_lora: weights with two transformers (Wan 2.2 A14B) need one LoRA each"
        )
    # Read here and handed over as a state dict, so that diffusers never reads the path as a
    # hub id.
    pipe.load_lora_weights(load_file(file), adapter_name=DISTILL_ADAPTER)
    pipe.fuse_lora(lora_scale=scale, adapter_names=[DISTILL_ADAPTER])
    pipe.unload_lora_weights()


def override_scheduler(pipe: Any, settings: tuple[tuple[str, SchedulerValue], ...]) -> None:
    """The same scheduler class with some settings replaced, as distilled LoRAs want theirs."""
    scheduler_cls = type(pipe.scheduler)
    accepted = set(inspect.signature(scheduler_cls.__init__).parameters) - {"self"}
    unknown = sorted(name for name, _ in settings if name not in accepted)
    if unknown:
        # from_config would drop them with a log line: the operator's setting would do nothing.
        raise ValueError(
            f"scheduler: {scheduler_cls.__name__} has no setting {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **dict(settings))


def set_attention(denoisers: list[Any], backend: str) -> None:
    from diffusers import attention_backend

    for denoiser in denoisers:
        if not any(hasattr(p, "_attention_backend") for p in attention_processors(denoiser)):
            # A UNet's processors call torch themselves: the backend would change nothing.
            raise ValueError(
                f"attention: {type(denoiser).__name__}'s attention does not go through "
                "diffusers' attention dispatcher"
            )
        # set_attention_backend also makes the backend the process-wide default, which would
        # switch every other loaded model that keeps "default". The context manager puts the
        # process default back on leaving; this model keeps its own.
        with attention_backend():
            denoiser.set_attention_backend(backend)


def attention_processors(denoiser: Any) -> list[Any]:
    """The processors of the denoiser's attention modules (not every denoiser lists them)."""
    return [m.processor for m in denoiser.modules() if getattr(m, "processor", None) is not None]


def enable_first_block_cache(denoisers: list[Any], threshold: float) -> None:
    from diffusers import FirstBlockCacheConfig

    for denoiser in denoisers:
        if not hasattr(denoiser, "enable_cache"):
            raise ValueError(f"cache: {type(denoiser).__name__} has no cache support")
        layers = denoiser.config.get("num_layers")
        if layers is not None and layers < 2:
            # The cache compares the first block's output and skips the rest: with one block
            # there is nothing to skip (and diffusers fails obscurely).
            raise ValueError(f"cache: {type(denoiser).__name__} has {layers} block; it needs 2+")
        denoiser.enable_cache(FirstBlockCacheConfig(threshold=threshold))
