"""(backend, family) -> engine. Each engine's module (and so torch) is imported only when used.

A new backend (a remote inference server, say) registers its families here and names itself
in the catalog's `backend` field; the worker never knows which one it runs.
"""

from __future__ import annotations

from importlib import import_module

from imagesynth.domain import FAMILIES, Backend, Family
from imagesynth.engine.base import Engine, EngineSpec

_ENGINES: dict[tuple[Backend, Family], tuple[str, str]] = {
    ("diffusers", "qwen-image"): ("imagesynth.engine.diffusers.qwen_image", "QwenImageEngine"),
    ("diffusers", "wan"): ("imagesynth.engine.diffusers.wan", "WanEngine"),
    ("diffusers", "stable-diffusion"): (
        "imagesynth.engine.diffusers.stable_diffusion",
        "StableDiffusionEngine",
    ),
    ("diffusers", "z-image"): ("imagesynth.engine.diffusers.z_image", "ZImageEngine"),
    **{
        ("openai-images", family): ("imagesynth.engine.remote.openai_images", "OpenAIImagesEngine")
        for family in FAMILIES
    },
}


class UnknownEngine(LookupError):
    """No engine is registered for the backend and family."""


def supports(backend: str, family: str) -> bool:
    return (backend, family) in _ENGINES


def create_engine(spec: EngineSpec) -> Engine:
    """An unloaded engine for the spec's backend and family; call `load()` before
    `generate()`."""
    try:
        module, name = _ENGINES[spec.backend, spec.family]
    except KeyError:
        raise UnknownEngine(
            f"no engine for backend {spec.backend!r} and family {spec.family!r}"
        ) from None
    engine: Engine = getattr(import_module(module), name)(spec)
    return engine
