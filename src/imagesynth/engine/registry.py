"""Family name -> adapter. Each family's module (and so torch) is imported only when used."""

from __future__ import annotations

from importlib import import_module

from imagesynth.engine.base import Adapter, EngineSpec, Family

_ADAPTERS: dict[Family, tuple[str, str]] = {
    "qwen-image": ("imagesynth.engine.qwen_image", "QwenImageAdapter"),
    "wan": ("imagesynth.engine.wan", "WanAdapter"),
    "stable-diffusion": ("imagesynth.engine.stable_diffusion", "StableDiffusionAdapter"),
}


def create_adapter(spec: EngineSpec) -> Adapter:
    """An unloaded adapter for the spec's family; call `load()` before `generate()`."""
    try:
        module, name = _ADAPTERS[spec.family]
    except KeyError:
        raise ValueError(f"unknown pipeline family {spec.family!r}") from None
    adapter: Adapter = getattr(import_module(module), name)(spec)
    return adapter
