"""Per-model request validation from the built-in catalog, and catalog file parsing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from imagesynth.catalog import STYLES, Catalog, CatalogError, ModelSpec, Style
from imagesynth.domain import SEED_MAX, GenerationParams
from imagesynth.engine.base import IPAdapterWeights, LoraWeights
from imagesynth.engine.registry import supports
from imagesynth.errors import InvalidParameter, ModelNotFound
from imagesynth.worker.engines import engine_spec

QWEN = ("qwen-image", "qwen-image-plus")
WAN_FREE = (
    "wan2.2-t2i-plus",
    "wan2.2-t2i-flash",
    "wanx2.1-t2i-plus",
    "wanx2.1-t2i-turbo",
    "wanx2.0-t2i-turbo",
)
QWEN_SIZES = ("1664*928", "1472*1104", "1328*1328", "1104*1472", "928*1664")
QWEN_LEGACY_SIZES = ("1472*1140", "1140*1472")
WANX_V1_SIZES = ("1024*1024", "720*1280", "768*1152", "1280*720")
MALFORMED_SIZES = (
    "",
    "1024",
    "1024*",
    "*1024",
    "1024x1024",
    "1024 * 1024",
    " 1024*1024",
    "1024*1024 ",
    "1024*1024\n",
    "-1024*1024",
    "+1024*1024",
    "1024.0*1024",
    "1024*768*2",
    "a*b",
    "１０２４*１０２４",  # full-width digits
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def validate(catalog: Catalog, model: str, **fields: Any) -> GenerationParams:
    fields.setdefault("prompt", "a lighthouse at dusk")
    return catalog.get(model).validate(**fields)


def rejected(catalog: Catalog, model: str, **fields: Any) -> str:
    """The message of the InvalidParameter that validation raises."""
    with pytest.raises(InvalidParameter) as info:
        validate(catalog, model, **fields)
    return info.value.message


# -- the catalog itself ----------------------------------------------------------------------


def test_builtin_catalog_serves_the_dashscope_models(catalog: Catalog) -> None:
    newer = {"qwen-image-max", "z-image-turbo", "wan2.6-t2i", "wan2.5-t2i-preview"}
    assert set(catalog.models) == {*QWEN, *WAN_FREE, "wanx-v1", *newer}
    assert catalog.source == "built-in"
    for name, spec in catalog.models.items():
        assert spec.name == name
        assert spec.is_demo


def test_newer_models_rules(catalog: Catalog) -> None:
    """Spec §1.3-1.4: wan2.5/2.6 sizes by total pixels and aspect, their prompt lengths, and
    each model's endpoints and prompt_extend default."""
    for name in ("wan2.6-t2i", "wan2.5-t2i-preview"):
        assert validate(catalog, name).width == 1280  # default 1280*1280
        assert validate(catalog, name, size="2560*640").height == 640  # 4:1
        assert "1:4" in rejected(catalog, name, size="2600*600")  # wider than 4:1
        assert "1280*1280" in rejected(catalog, name, size="1024*1024")
    assert len(validate(catalog, "wan2.5-t2i-preview", prompt="x" * 2500).prompt) == 2000
    assert len(validate(catalog, "wan2.6-t2i", prompt="x" * 2500).prompt) == 2100
    assert catalog.get("wan2.6-t2i").endpoints == ("image-generation", "multimodal")
    assert catalog.get("qwen-image-max").endpoints == ("multimodal",)
    assert validate(catalog, "qwen-image-max").prompt_extend is True
    zimage = validate(catalog, "z-image-turbo")
    assert (zimage.width, zimage.height, zimage.n, zimage.prompt_extend) == (1024, 1536, 1, False)
    assert "n must be 1" in rejected(catalog, "z-image-turbo", n=2)
    assert "2048*2048" in rejected(catalog, "z-image-turbo", size="2048*2560")


def test_catalog_refuses_unknown_endpoints(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="endpoints"):
        load(tmp_path, '[models.m]\nfamily = "wan"\nendpoints = ["text2video"]\n')


@pytest.mark.parametrize("name", ["flux-dev", "", None, "QWEN-IMAGE", "qwen-image "])
def test_unknown_model_is_not_found(catalog: Catalog, name: str | None) -> None:
    with pytest.raises(ModelNotFound):
        catalog.get(name)


# -- size ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", QWEN)
@pytest.mark.parametrize("size", QWEN_SIZES + QWEN_LEGACY_SIZES)
def test_qwen_accepts_its_fixed_sizes_including_legacy(
    catalog: Catalog, model: str, size: str
) -> None:
    params = validate(catalog, model, size=size)

    assert f"{params.width}*{params.height}" == size


@pytest.mark.parametrize("model", QWEN)
@pytest.mark.parametrize("size", ["1024*1024", "928*1663", "1472*1141", "1664*928*1", "512*512"])
def test_qwen_refuses_other_sizes(catalog: Catalog, model: str, size: str) -> None:
    message = rejected(catalog, model, size=size)

    assert message.startswith("size must be one of 1664*928,")
    assert "1472*1140" in message and model in message and repr(size) in message


@pytest.mark.parametrize("model", QWEN)
def test_qwen_default_size(catalog: Catalog, model: str) -> None:
    params = validate(catalog, model)

    assert (params.width, params.height) == (1664, 928)


@pytest.mark.parametrize("model", WAN_FREE)
@pytest.mark.parametrize(
    "size", ["512*512", "1440*1440", "512*1440", "1440*512", "1024*768", "777*1333"]
)
def test_wan_accepts_free_sizes_within_bounds(catalog: Catalog, model: str, size: str) -> None:
    params = validate(catalog, model, size=size)

    assert f"{params.width}*{params.height}" == size


@pytest.mark.parametrize("model", WAN_FREE)
@pytest.mark.parametrize(
    "size", ["511*512", "512*511", "1441*1440", "1440*1441", "511*1024", "1024*1441", "0*0"]
)
def test_wan_refuses_sides_out_of_bounds(catalog: Catalog, model: str, size: str) -> None:
    message = rejected(catalog, model, size=size)

    assert message.startswith("size must be W*H with each side in [512, 1440]")
    assert "1440*1440 pixels" in message and model in message and repr(size) in message


@pytest.mark.parametrize("model", WAN_FREE)
def test_wan_default_size(catalog: Catalog, model: str) -> None:
    params = validate(catalog, model)

    assert (params.width, params.height) == (1024, 1024)


def test_free_sizes_bound_total_pixels() -> None:
    # In the built-in catalog the pixel bound equals the largest square; a tighter one binds.
    spec = ModelSpec(name="custom", family="wan", max_pixels=1024 * 1024)

    assert spec.validate(prompt="p", size="1024*1024").width == 1024
    assert spec.validate(prompt="p", size="1440*728").width == 1440  # 1,048,320 pixels
    for size in ("1024*1025", "1440*729", "1440*1440"):
        with pytest.raises(InvalidParameter, match=r"at most 1024\*1024 pixels"):
            spec.validate(prompt="p", size=size)


@pytest.mark.parametrize("size", WANX_V1_SIZES)
def test_wanx_v1_accepts_its_fixed_sizes(catalog: Catalog, size: str) -> None:
    params = validate(catalog, "wanx-v1", size=size)

    assert f"{params.width}*{params.height}" == size


@pytest.mark.parametrize("size", ["1280*1280", "512*512", "1152*768", "1024*768"])
def test_wanx_v1_refuses_other_sizes(catalog: Catalog, size: str) -> None:
    message = rejected(catalog, "wanx-v1", size=size)

    assert message.startswith("size must be one of 1024*1024, 720*1280, 768*1152, 1280*720")


@pytest.mark.parametrize("model", ["qwen-image", "wan2.2-t2i-plus", "wanx-v1"])
@pytest.mark.parametrize("size", MALFORMED_SIZES)
def test_malformed_sizes_are_refused(catalog: Catalog, model: str, size: str) -> None:
    message = rejected(catalog, model, size=size)

    assert message.startswith("size must be")


# -- n ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", QWEN)
def test_qwen_n_must_be_1(catalog: Catalog, model: str) -> None:
    assert validate(catalog, model).n == 1
    assert validate(catalog, model, n=1).n == 1
    for n in (0, 2, 4, -1):
        assert rejected(catalog, model, n=n) == f"n must be 1 for model {model}; got {n}"


@pytest.mark.parametrize("model", [*WAN_FREE, "wanx-v1"])
def test_n_range_for_multi_image_models(catalog: Catalog, model: str) -> None:
    assert validate(catalog, model).n == 4
    for n in (1, 2, 3, 4):
        assert validate(catalog, model, n=n).n == n
    for n in (0, 5, -1):
        assert rejected(catalog, model, n=n) == f"n must be in [1, 4] for {model}; got {n}"


# -- seed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 12345, SEED_MAX])
def test_seed_within_bounds_is_kept(catalog: Catalog, seed: int) -> None:
    assert SEED_MAX == 2_147_483_647
    assert validate(catalog, "wanx-v1", seed=seed).seed == seed


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2**63])
def test_seed_out_of_bounds_is_refused(catalog: Catalog, seed: int) -> None:
    assert rejected(catalog, "wanx-v1", seed=seed) == (
        f"seed must be in [0, 2147483647]; got {seed}"
    )


@pytest.mark.parametrize("model", ["qwen-image", "wanx-v1"])
def test_absent_seed_is_random_and_leaves_room_for_n_images(catalog: Catalog, model: str) -> None:
    spec = catalog.get(model)
    seeds = [validate(catalog, model).seed for _ in range(20)]

    assert len(set(seeds)) > 1
    # Image i uses seed + i, so the last image's seed must still be in range.
    assert all(s >= 0 and s + spec.n_max - 1 <= SEED_MAX for s in seeds)


# -- steps and guidance ----------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 50, 100])
def test_steps_within_bounds_are_kept(catalog: Catalog, steps: int) -> None:
    assert validate(catalog, "wan2.2-t2i-plus", steps=steps).steps == steps


@pytest.mark.parametrize("steps", [0, -1, 101])
def test_steps_out_of_bounds_are_refused(catalog: Catalog, steps: int) -> None:
    assert rejected(catalog, "wan2.2-t2i-plus", steps=steps) == (
        f"steps must be in [1, 100] for wan2.2-t2i-plus; got {steps}"
    )


def test_default_steps_depend_on_the_weights(catalog: Catalog) -> None:
    demo = catalog.get("qwen-image")
    real = dataclasses.replace(demo, weights="Qwen/Qwen-Image")

    assert demo.validate(prompt="p").steps == demo.demo_steps == 4
    assert real.validate(prompt="p").steps == 50


@pytest.mark.parametrize("guidance", [0.0, 0, 3.5, 20.0, 20])
def test_guidance_within_bounds_is_kept(catalog: Catalog, guidance: float) -> None:
    params = validate(catalog, "wanx-v1", guidance=guidance)

    assert params.guidance == guidance and isinstance(params.guidance, float)


@pytest.mark.parametrize("guidance", [-0.1, 20.01, float("inf"), float("nan")])
def test_guidance_out_of_bounds_is_refused(catalog: Catalog, guidance: float) -> None:
    message = rejected(catalog, "wanx-v1", guidance=guidance)

    assert message.startswith("guidance must be in [0.0, 20.0] for wanx-v1; got ")


@pytest.mark.parametrize(("model", "guidance"), [("qwen-image", 4.0), ("wanx-v1", 7.5)])
def test_default_guidance_comes_from_the_catalog(
    catalog: Catalog, model: str, guidance: float
) -> None:
    assert validate(catalog, model).guidance == guidance


# -- prompt ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [None, "", "   ", "\n\t"])
def test_prompt_is_required(catalog: Catalog, prompt: str | None) -> None:
    assert rejected(catalog, "qwen-image", prompt=prompt) == "Field required: input.prompt"


@pytest.mark.parametrize("model", ["qwen-image", "wan2.2-t2i-flash", "wanx-v1"])
def test_long_prompts_are_truncated(catalog: Catalog, model: str) -> None:
    prompt = "p" * 799 + "QR"
    negative = "n" * 499 + "XY"

    params = validate(catalog, model, prompt=prompt, negative_prompt=negative)

    assert params.prompt == "p" * 799 + "Q"
    assert params.negative_prompt == "n" * 499 + "X"


def test_prompts_at_the_limit_are_kept_whole(catalog: Catalog) -> None:
    params = validate(catalog, "wanx-v1", prompt="猫" * 800, negative_prompt="狗" * 500)

    assert params.prompt == "猫" * 800
    assert params.negative_prompt == "狗" * 500


# -- everything together ---------------------------------------------------------------------


def test_defaults_are_filled_in(catalog: Catalog) -> None:
    params = validate(catalog, "wanx-v1", seed=7)

    assert params == GenerationParams(
        prompt="a lighthouse at dusk",
        negative_prompt="",
        width=1024,
        height=1024,
        n=4,
        seed=7,
        steps=4,
        guidance=7.5,
        prompt_extend=True,
        watermark=False,
        style=None,
    )


def test_explicit_values_are_kept(catalog: Catalog) -> None:
    params = validate(
        catalog,
        "wanx-v1",
        negative_prompt="fog",
        size="720*1280",
        n=2,
        seed=9,
        steps=12,
        guidance=3.0,
        prompt_extend=False,
        watermark=True,
        style="<anime>",
    )

    assert (params.width, params.height, params.n, params.seed) == (720, 1280, 2, 9)
    assert (params.steps, params.guidance, params.negative_prompt) == (12, 3.0, "fog")
    assert (params.prompt_extend, params.watermark, params.style) == (False, True, "<anime>")


@pytest.mark.parametrize("style", STYLES)
def test_wanx_v1_accepts_its_styles(catalog: Catalog, style: str) -> None:
    assert validate(catalog, "wanx-v1", style=style).style == style


@pytest.mark.parametrize("style", ["<cyberpunk>", "anime", "", "<ANIME>"])
def test_wanx_v1_refuses_other_styles(catalog: Catalog, style: str) -> None:
    assert rejected(catalog, "wanx-v1", style=style).startswith("style must be one of <auto>,")


@pytest.mark.parametrize(
    ("model", "fields", "field"),
    [
        ("qwen-image", {"size": "1*1"}, "size"),
        ("wan2.2-t2i-plus", {"size": "bad"}, "size"),
        ("qwen-image", {"n": 2}, "n"),
        ("wanx-v1", {"n": 9}, "n"),
        ("wanx-v1", {"seed": -5}, "seed"),
        ("wanx-v1", {"steps": 0}, "steps"),
        ("wanx-v1", {"guidance": 99.0}, "guidance"),
        ("wanx-v1", {"style": "<x>"}, "style"),
        ("wanx-v1", {"prompt": ""}, "input.prompt"),
    ],
)
def test_messages_name_the_field(
    catalog: Catalog, model: str, fields: dict[str, Any], field: str
) -> None:
    message = rejected(catalog, model, **fields)

    assert message.startswith(f"{field} must be") or message == f"Field required: {field}"


# -- catalog files ---------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> Catalog:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return Catalog.load(path)


def test_catalog_file_is_parsed(tmp_path: Path) -> None:
    catalog = load(
        tmp_path,
        """
        [models.my-sd]
        family = "stable-diffusion"
        weights = "/models/sd15"
        sizes = ["512*512", "768*512"]
        default_size = "512*512"
        n_max = 2
        n_default = 1
        steps = 25

        [models."my.wan"]
        family = "wan"
        max_side = 1024
        """,
    )

    assert set(catalog.models) == {"my-sd", "my.wan"}
    assert catalog.source == str(tmp_path / "catalog.toml")
    sd = catalog.get("my-sd")
    assert (sd.sizes, sd.n_max, sd.default_steps, sd.is_demo) == (
        ("512*512", "768*512"),
        2,
        25,
        False,
    )
    assert sd.validate(prompt="p").n == 1
    with pytest.raises(InvalidParameter):
        sd.validate(prompt="p", n=3)
    with pytest.raises(InvalidParameter):
        catalog.get("my.wan").validate(prompt="p", size="1025*1024")


def test_a_z_image_entry_loads_and_reaches_its_engine(tmp_path: Path) -> None:
    catalog = load(
        tmp_path,
        """
        [models.my-turbo]
        family = "z-image"
        weights = "demo"
        endpoints = ["multimodal"]
        steps = 9
        guidance = 0.0
        min_side = 512
        max_side = 2048
        max_pixels = 4194304
        default_size = "1024*1536"
        n_max = 1
        n_default = 1

        [models.hub-turbo]
        family = "z-image"
        weights = "Tongyi-MAI/Z-Image-Turbo"
        """,
    )
    demo, hub = catalog.get("my-turbo"), catalog.get("hub-turbo")
    assert (demo.family, demo.is_demo, hub.family, hub.is_demo) == (
        "z-image",
        True,
        "z-image",
        False,
    )
    params = demo.validate(prompt="p", size="2048*2048")
    assert (params.width, params.height, params.n, params.guidance) == (2048, 2048, 1, 0.0)
    assert "2048" in rejected(catalog, "my-turbo", size="2048*2560")
    # Demo weights resolve to the demo build's z-image folder; a hub id is passed on as is.
    assert engine_spec(demo, tmp_path).weights == str(tmp_path / "z-image")
    assert engine_spec(hub, tmp_path).weights == "Tongyi-MAI/Z-Image-Turbo"
    assert supports(engine_spec(demo, tmp_path).backend, "z-image")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[models.x]\nfamily = "wan"\nstepz = 3\n', r"model x: unknown keys \['stepz'\]"),
        ('[models.x]\nfamily = "flux"\n', r"model x: family must be one of"),
        ("[models.x]\nsteps = 3\n", r"model x: family must be one of"),
        ('[models.x]\nfamily = "wan"\nsizes = ["1024x1024"]\n', r"model x: bad size '1024x1024'"),
        ('[models.x]\nfamily = "wan"\ndefault_size = "big"\n', r"model x: bad size 'big'"),
        ('[models.x]\nfamily = "wan"\nsizes = "1024*1024"\n', r"model x: bad size"),
        ('[models.x]\nfamily = "wan"\nsizes = [1024]\n', r"model x: bad size 1024"),
        ('[models.x]\nfamily = "wan"\ndefault_size = 1024\n', r"model x: bad size 1024"),
        ("", r"no models defined"),
        ("[models]\n", r"no models defined"),
        ('[models.x\nfamily = "wan"\n', r"catalog\.toml: "),
    ],
    ids=[
        "unknown-key",
        "bad-family",
        "no-family",
        "bad-size",
        "bad-default-size",
        "sizes-not-a-list",
        "size-not-a-string",
        "default-size-not-a-string",
        "empty-file",
        "empty-models",
        "toml-syntax",
    ],
)
def test_catalog_file_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(CatalogError, match=match) as info:
        load(tmp_path, text)

    assert str(tmp_path / "catalog.toml") in info.value.message


# -- wanx-v1 styles ---------------------------------------------------------------------------


def test_builtin_styles_are_dashscopes_ten(catalog: Catalog) -> None:
    assert tuple(catalog.styles) == STYLES
    assert tuple(catalog.get("wanx-v1").style_table) == STYLES


def test_style_sets_its_guidance_unless_the_request_does(catalog: Catalog) -> None:
    anime = catalog.styles["<anime>"]
    assert anime.guidance is not None
    assert validate(catalog, "wanx-v1", style="<anime>").guidance == anime.guidance
    assert validate(catalog, "wanx-v1", style="<anime>", guidance=3.0).guidance == 3.0
    assert validate(catalog, "wanx-v1").guidance == catalog.get("wanx-v1").guidance


def test_models_without_styles_ignore_the_parameter(catalog: Catalog) -> None:
    params = validate(catalog, "wan2.2-t2i-flash", style="<anime>")
    assert params.style is None
    assert params.guidance == catalog.get("wan2.2-t2i-flash").guidance


def test_style_apply_wraps_prompts() -> None:
    style = Style(name="<x>", prompt="ink of {prompt}, misty", negative_prompt="photo")
    assert style.apply("a crane", "") == ("ink of a crane, misty", "photo")
    assert style.apply("a crane", "blurry") == ("ink of a crane, misty", "blurry, photo")
    assert Style(name="<auto>").apply("a crane", "blurry") == ("a crane", "blurry")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[styles."<a>"]\nprompt = "no placeholder"\n', "must contain"),
        ('[styles."<a>"]\ncolour = "red"\n', "keys must be among"),
        ('[styles."<a>"]\nguidance = "high"\n', "guidance must be a number"),
        ('[models.x]\nfamily = "wan"\nstyles = true\n', "no \\[styles\\]"),
    ],
)
def test_style_table_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(text + ('\n[models.y]\nfamily = "wan"\n' if "models" not in text else ""))
    with pytest.raises(CatalogError, match=match):
        Catalog.load(path)


# -- wanx-v1 image adapters: IP-Adapter for refonly, LoRAs for styles -------------------------

SD_WITH_REFERENCES = """
[models.my-sd]
family = "stable-diffusion"
weights = "/models/sd15"
reference_images = true
"""


def test_builtin_wanx_v1_uses_the_demo_ip_adapter(catalog: Catalog, tmp_path: Path) -> None:
    spec = engine_spec(catalog.get("wanx-v1"), tmp_path)
    assert spec.ip_adapter == IPAdapterWeights(
        path=str(tmp_path / "stable-diffusion"),
        weight_name="ip-adapter.safetensors",
        subfolder="ip-adapter",
        image_encoder="image_encoder",
    )
    assert spec.loras == ()
    # The other models have none.
    assert all(
        engine_spec(m, tmp_path).ip_adapter is None
        for m in catalog.models.values()
        if m.name != "wanx-v1"
    )


def test_ip_adapter_keys_reach_the_engine_spec(tmp_path: Path) -> None:
    catalog = load(
        tmp_path,
        SD_WITH_REFERENCES
        + """
        ip_adapter = "h94/IP-Adapter"
        ip_adapter_subfolder = "models"
        ip_adapter_weight_name = "ip-adapter_sd15.safetensors"

        [models.local-sd]
        family = "stable-diffusion"
        weights = "/models/sd15"
        reference_images = true
        ip_adapter = "/models/ip"
        ip_adapter_weight_name = "ip.bin"
        ip_adapter_image_encoder = "encoders/clip-h"

        [models.plain-sd]
        family = "stable-diffusion"
        weights = "/models/sd15"
        reference_images = true
        """,
    )
    hub, local, plain = (engine_spec(catalog.get(m), tmp_path) for m in catalog.models)
    assert hub.ip_adapter == IPAdapterWeights(
        "h94/IP-Adapter", "ip-adapter_sd15.safetensors", "models", "image_encoder"
    )
    assert local.ip_adapter == IPAdapterWeights("/models/ip", "ip.bin", "", "encoders/clip-h")
    assert plain.ip_adapter is None
    # The worker keys its loaded pipelines by engine spec: each adapter gets its own.
    assert len({hub, local, plain}) == 3
    assert hub == engine_spec(catalog.get("my-sd"), tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (SD_WITH_REFERENCES + "ip_adapter = 3\n", "ip_adapter must be str | None"),
        (
            SD_WITH_REFERENCES + 'ip_adapter = "/ip"\nip_adapter_weight_name = true\n',
            "ip_adapter_weight_name must be str | None",
        ),
        (SD_WITH_REFERENCES + 'ip_adapter = "/ip"\n', "needs ip_adapter_weight_name"),
        (SD_WITH_REFERENCES + 'ip_adapter = ""\n', "must be a folder, a hub id or"),
        (SD_WITH_REFERENCES + 'ip_adapter = "demo"\n', 'fits only weights = "demo"'),
        (
            '[models.x]\nfamily = "stable-diffusion"\nreference_images = true\n'
            'ip_adapter = "demo"\nip_adapter_subfolder = "models"\n',
            "sets ip_adapter_subfolder itself",
        ),
        (
            SD_WITH_REFERENCES + 'ip_adapter_weight_name = "ip.bin"\n',
            "ip_adapter_weight_name need ip_adapter",
        ),
        (
            '[models.x]\nfamily = "stable-diffusion"\nip_adapter = "demo"\n',
            "ip_adapter needs reference_images = true",
        ),
        (
            '[models.x]\nfamily = "wan"\nreference_images = true\nip_adapter = "demo"\n',
            "ip_adapter is for family stable-diffusion only",
        ),
        (SD_WITH_REFERENCES + "ip_adapter_scale = 0.5\n", r"unknown keys \['ip_adapter_scale'\]"),
    ],
    ids=[
        "not-a-string",
        "weight-name-not-a-string",
        "no-weight-name",
        "empty",
        "demo-with-real-weights",
        "demo-with-options",
        "options-without-adapter",
        "no-reference-images",
        "not-stable-diffusion",
        "unknown-key",
    ],
)
def test_ip_adapter_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(CatalogError, match=match):
        load(tmp_path, text)


def test_style_loras_reach_the_engine_spec(tmp_path: Path) -> None:
    catalog = load(
        tmp_path,
        """
        [models.my-sd]
        family = "stable-diffusion"
        styles = true

        [styles."<ink>"]
        prompt = "ink painting of {prompt}"
        lora = "/loras/ink.safetensors"
        lora_scale = 0.8

        [styles."<auto>"]

        [styles."<clay>"]
        lora = "/loras/clay.safetensors"
        """,
    )
    assert catalog.styles["<ink>"].lora == "/loras/ink.safetensors"
    assert engine_spec(catalog.get("my-sd"), tmp_path).loras == (
        LoraWeights("<ink>", "/loras/ink.safetensors", 0.8),
        LoraWeights("<clay>", "/loras/clay.safetensors", 1.0),
    )


@pytest.mark.parametrize(
    ("style", "match"),
    [
        ('lora = "ink.safetensors"', "lora must be an absolute path to a .safetensors file"),
        ('lora = "/loras/ink.ckpt"', "lora must be an absolute path to a .safetensors file"),
        ("lora = 1", "lora must be an absolute path"),
        ('lora = "/loras/ink.safetensors"\nlora_scale = "high"', "lora_scale must be a number"),
        ("lora_scale = 0.5", "lora_scale needs lora"),
    ],
)
def test_style_lora_errors(tmp_path: Path, style: str, match: str) -> None:
    text = f'[styles."<ink>"]\n{style}\n\n[models.y]\nfamily = "stable-diffusion"\n'
    with pytest.raises(CatalogError, match=match):
        load(tmp_path, text)


def test_style_loras_are_for_stable_diffusion_only(tmp_path: Path) -> None:
    text = '[styles."<ink>"]\nlora = "/l/ink.safetensors"\n\n[models.w]\nfamily = "wan"\n'
    with pytest.raises(CatalogError, match="style LoRAs are for family stable-diffusion only"):
        load(tmp_path, text + "styles = true\n")
