"""The speed levers' catalog keys: parsed, handed to the engine, and refused when they cannot
work with the model's family or device (docs/gpu-levers.md)."""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import pytest

from imagesynth.catalog import ATTENTION_BACKENDS, Catalog, CatalogError
from imagesynth.engine.base import Levers
from imagesynth.worker.engines import engine_spec


def load(tmp_path: Path, text: str) -> Catalog:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return Catalog.load(path)


def test_levers_reach_the_engine_spec(tmp_path: Path) -> None:
    catalog = load(
        tmp_path,
        """
        [models.fast-qwen]
        family = "qwen-image"
        device = "cuda"
        compile = true
        distill_lora = "/loras/lightning.safetensors"
        distill_lora_scale = 0.9
        offload = "model"
        attention = "flash"
        cache = "first-block"
        cache_threshold = 0.08

        [models.fast-qwen.scheduler]
        use_dynamic_shifting = true
        base_shift = 1.0986
        shift_terminal = "none"
        time_shift_type = "exponential"
        max_image_seq_len = 8192

        [models.plain]
        family = "wan"
        """,
    )
    # Settings in name order, "none" as None: one engine whatever the file's order.
    assert engine_spec(catalog.get("fast-qwen"), tmp_path).levers == Levers(
        compile=True,
        distill_lora="/loras/lightning.safetensors",
        distill_lora_scale=0.9,
        scheduler=(
            ("base_shift", 1.0986),
            ("max_image_seq_len", 8192),
            ("shift_terminal", None),
            ("time_shift_type", "exponential"),
            ("use_dynamic_shifting", True),
        ),
        offload="model",
        attention="flash",
        cache="first-block",
        cache_threshold=0.08,
    )
    # Without levers nothing changes, and the spec stays hashable (it keys the loaded engines).
    plain = engine_spec(catalog.get("plain"), tmp_path)
    assert plain.levers == Levers()
    assert hash(engine_spec(catalog.get("fast-qwen"), tmp_path)) != hash(plain)


def test_the_builtin_catalogs_lightning_example_loads_with_lightnings_settings(
    tmp_path: Path,
) -> None:
    """The commented Qwen-Image-Lightning entry in default_catalog.toml's header, uncommented,
    is a valid entry with the settings of Lightning's model card."""
    header = resources.files("imagesynth").joinpath("default_catalog.toml").read_text()
    example = re.search(r"^# (\[models\.qwen-image-lightning\]\n(?:#  ?\S.*\n)+)", header, re.M)
    assert example, "the Lightning example is missing from the catalog's header"
    entry = re.sub(r"^# ?", "", example.group(1), flags=re.M)
    spec = load(tmp_path, entry).get("qwen-image-lightning")
    assert (spec.family, spec.steps, spec.guidance) == ("qwen-image", 8, 1.0)
    assert spec.distill_lora is not None and spec.distill_lora.endswith(".safetensors")
    settings = dict(spec.scheduler)
    assert settings == {
        "base_image_seq_len": 256,
        "base_shift": pytest.approx(math.log(3)),
        "invert_sigmas": False,
        "max_image_seq_len": 8192,
        "max_shift": pytest.approx(math.log(3)),
        "shift": 1.0,
        "shift_terminal": None,
        "stochastic_sampling": False,
        "time_shift_type": "exponential",
        "use_beta_sigmas": False,
        "use_dynamic_shifting": True,
        "use_exponential_sigmas": False,
        "use_karras_sigmas": False,
    }


def test_the_attention_backends_are_diffusers_own() -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    assert set(ATTENTION_BACKENDS) == {"default"} | {b.value for b in AttentionBackendName}


@pytest.mark.parametrize(
    ("family", "levers", "match"),
    [
        ("stable-diffusion", 'cache = "first-block"', 'cache = "first-block" is for families'),
        ("z-image", 'cache = "first-block"', "the z-image denoiser has no cache support"),
        ("wan", 'cache = "teacache"', "cache must be one of none, first-block"),
        ("wan", "cache_threshold = 0.1", "cache_threshold needs cache"),
        ("wan", 'cache = "first-block"\ncache_threshold = 0', r"cache_threshold must be > 0"),
        ("stable-diffusion", 'attention = "flash"', "attention is for families"),
        ("qwen-image", 'attention = "flash2"', "attention must be one of default, native"),
        ("qwen-image", 'device = "cpu"\noffload = "model"', "needs an accelerator"),
        ("qwen-image", 'offload = "disk"', "offload must be one of none, model, sequential"),
        ("qwen-image", 'distill_lora = "lightning.safetensors"', "distill_lora must be an abs"),
        ("qwen-image", 'distill_lora = "/l/lightning.ckpt"', "distill_lora must be an absolute"),
        ("qwen-image", "distill_lora_scale = 0.5", "distill_lora_scale needs distill_lora"),
        ("qwen-image", 'compile = "yes"', "compile must be bool"),
        ("qwen-image", "scheduler = 3", "scheduler must be a table"),
        ("qwen-image", "scheduler = { shift = [1, 2] }", "scheduler.shift must be a string"),
    ],
    ids=[
        "cache-on-a-unet",
        "cache-on-z-image",
        "unknown-cache",
        "threshold-without-cache",
        "zero-threshold",
        "attention-on-a-unet",
        "unknown-attention",
        "offload-on-the-cpu",
        "unknown-offload",
        "relative-lora",
        "not-safetensors",
        "scale-without-lora",
        "compile-not-bool",
        "scheduler-not-a-table",
        "scheduler-list-value",
    ],
)
def test_a_lever_that_cannot_work_is_refused_naming_the_model_and_option(
    tmp_path: Path, family: str, levers: str, match: str
) -> None:
    with pytest.raises(CatalogError, match=match) as info:
        load(tmp_path, f'[models.fast]\nfamily = "{family}"\n{levers}\n')
    assert "model fast:" in info.value.message
