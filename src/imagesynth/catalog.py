"""The model catalog: which model names are served, from which weights, under which rules.

A TOML file (built-in default: default_catalog.toml) maps each DashScope model name to a
pipeline family, weights and per-model validation rules. `ModelSpec.validate` turns a request's
loose fields into GenerationParams or raises InvalidParameter naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from imagesynth.domain import (
    BACKENDS,
    CACHES,
    FAMILIES,
    MAX_PARTIAL_IMAGES,
    OFFLOADS,
    OUTPUT_FORMATS,
    SEED_MAX,
    Backend,
    Cache,
    Family,
    GenerationParams,
    Offload,
    OutputFormat,
    SchedulerValue,
    parse_size,
)
from imagesynth.errors import ImageSynthError, InvalidParameter, ModelNotFound

DEMO_WEIGHTS = "demo"
# The default: the entry's `repo` when its files are in the Hugging Face cache or a weights
# folder, else the demo weights (imagesynth/weights/resolve.py decides, once per process).
# An entry still "auto" (a catalog nobody resolved) runs the demo weights.
AUTO_WEIGHTS = "auto"
# The DashScope endpoints a model can be served on (api/ routes check a model's list):
#   text2image        POST .../text2image/image-synthesis, input.prompt (async; sync if `sync`)
#   multimodal        POST .../multimodal-generation/generation, input.messages (sync)
#   image-generation  POST .../image-generation/generation, input.messages (async with
#                     X-DashScope-Async, else sync): wan2.6's protocol, whose task replies
#                     carry `choices` instead of `results`
ENDPOINTS = ("text2image", "multimodal", "image-generation")
REF_MODES = ("repaint", "refonly")
DEFAULT_REF_STRENGTH = 0.5
STYLES = (
    "<auto>",
    "<photography>",
    "<portrait>",
    "<3d cartoon>",
    "<anime>",
    "<oil painting>",
    "<watercolor>",
    "<sketch>",
    "<chinese painting>",
    "<flat illustration>",
)


# The attention backends of diffusers 0.42 (diffusers.models.attention_dispatch.
# AttentionBackendName; a test keeps the two equal), and "default": the process's own. Listed
# here because the catalog is read where diffusers is never imported (the API process).
ATTENTION_BACKENDS = (
    "default",
    "native",
    "_native_cudnn",
    "_native_efficient",
    "_native_flash",
    "_native_math",
    "_native_npu",
    "_native_xla",
    "flex",
    "flash",
    "flash_hub",
    "flash_varlen",
    "flash_varlen_hub",
    "flash_4_hub",
    "_flash_3",
    "_flash_varlen_3",
    "_flash_3_hub",
    "_flash_3_varlen_hub",
    "aiter_fa2_hub",
    "sage",
    "sage_hub",
    "sage_blackwell_hub",
    "sage_varlen",
    "_sage_qk_int8_pv_fp8_cuda",
    "_sage_qk_int8_pv_fp8_cuda_sm90",
    "_sage_qk_int8_pv_fp16_cuda",
    "_sage_qk_int8_pv_fp16_triton",
    "xformers",
)
# The families whose denoiser takes each lever (docs/gpu-levers.md): a UNet's attention does not
# go through diffusers' attention dispatcher, and only some transformers have cache support.
ATTENTION_FAMILIES: tuple[Family, ...] = ("qwen-image", "wan", "z-image")
CACHE_FAMILIES: tuple[Family, ...] = ("qwen-image", "wan")
# TOML has no null: a scheduler setting written "none" is None (e.g. shift_terminal).
SCHEDULER_NONE = "none"
SchedulerSettings = tuple[tuple[str, SchedulerValue], ...]


class CatalogError(ImageSynthError):
    """The model catalog is invalid."""


@dataclass(frozen=True)
class Style:
    """A wanx-v1 style: how it rewrites the prompts, and its own guidance default.

    Kept in the catalog's [styles] table so an operator can tune each style (or add one)."""

    name: str
    prompt: str = "{prompt}"  # a template: {prompt} is the user's prompt
    negative_prompt: str = ""  # appended to the user's negative prompt
    guidance: float | None = None  # used when the request gives no guidance
    lora: str | None = None  # an absolute path to a LoRA .safetensors file the style switches on
    lora_scale: float = 1.0  # how strongly that LoRA applies

    def apply(self, prompt: str, negative_prompt: str) -> tuple[str, str]:
        styled = self.prompt.replace("{prompt}", prompt)
        negative = ", ".join(p for p in (negative_prompt, self.negative_prompt) if p)
        return styled, negative


def _pixels(count: int) -> str:
    """A pixel count as a rule names it: 1638400 -> '1280*1280'."""
    side = math.isqrt(count)
    return f"{side}*{side}" if side * side == count else str(count)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    backend: Backend = "diffusers"  # the engine that runs it (engine/registry.py)
    weights: str = AUTO_WEIGHTS
    # The open weights behind the name, a Hugging Face hub id (e.g. "Qwen/Qwen-Image"): what
    # `imagesynth models pull` fetches and what weights = "auto" uses once it is here.
    repo: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    steps: int = 30
    demo_steps: int = 4
    max_steps: int = 100
    guidance: float = 5.0
    guidance_min: float = 0.0
    guidance_max: float = 20.0
    sizes: tuple[str, ...] = ()
    min_side: int = 512
    max_side: int = 1440
    min_pixels: int = 0
    max_pixels: int = 1440 * 1440
    max_aspect: float = 0.0  # e.g. 4.0: from 1:4 to 4:1; 0 leaves the aspect free
    default_size: str = "1024*1024"
    n_max: int = 4
    n_default: int = 4
    prompt_max_chars: int = 800
    negative_prompt_max_chars: int = 500
    result_prompts: bool = True
    prompt_extend_default: bool = True  # when the request leaves prompt_extend out
    endpoints: tuple[str, ...] = ("text2image",)  # see ENDPOINTS
    sync: bool = False  # text2image also answers without X-DashScope-Async (wan2.2)
    reference_images: bool = False  # takes input.ref_img with ref_strength and ref_mode
    # An image-prompt adapter (IP-Adapter) for ref_mode=refonly, as diffusers' load_ip_adapter
    # takes it: "demo" (the demo weights' own), a local folder or a hub id; without one,
    # refonly falls back to image-to-image from the blurred reference.
    ip_adapter: str | None = None
    ip_adapter_subfolder: str = ""
    ip_adapter_weight_name: str | None = None
    ip_adapter_image_encoder: str = "image_encoder"
    styles: bool = False  # takes parameters.style (from the catalog's [styles] table)
    # Speed levers for real GPUs, applied once when the worker loads the model
    # (docs/gpu-levers.md); the defaults change nothing.
    compile: bool = False  # torch.compile the denoiser's repeated blocks
    # A step-distilled LoRA (an absolute .safetensors path) fused into the weights at load,
    # e.g. Qwen-Image-Lightning; set steps and guidance to what it was distilled for.
    distill_lora: str | None = None
    distill_lora_scale: float = 1.0
    # Settings that replace the scheduler's own (a TOML table; "none" stands for None), e.g.
    # the ones the distilled LoRA wants. Kept as (name, value) pairs, so the spec stays hashable.
    scheduler: SchedulerSettings = ()
    offload: Offload = "none"  # "model" | "sequential": CPU offload for GPUs too small
    attention: str = "default"  # one of ATTENTION_BACKENDS, for families in ATTENTION_FAMILIES
    cache: Cache = "none"  # "first-block", for families in CACHE_FAMILIES
    cache_threshold: float = 0.05  # First Block Cache's: higher skips more steps' blocks
    watermark_text: str = ""  # the visible mark; empty: "Qwen-Image" for Qwen, else "AI生成"
    # Limits and billing (spec §3-4); an API key can override rps, in_flight and free_quota.
    rps: float = 2.0  # task submissions per second per key
    in_flight: int = 2  # tasks RUNNING at once per key; the rest wait PENDING
    price: float = 0.0  # per successfully generated image, in the catalog's currency
    free_quota: int = 0  # free images per key, valid [billing] free_quota_days from its creation
    # Images one pipeline call may make for several compatible tasks (same size, steps,
    # guidance and style; no reference image). 1: every task runs alone. A task with more
    # images than this still runs, alone.
    max_batch: int = 1
    # backend = "openai-images": the server (its base URL, e.g. "http://gpu1:30000/v1"), the
    # model name it serves (default: this entry's name), the environment variable holding its
    # API key, how long one request may take, how often a failed one is retried (with
    # backoff), and whether it gives image i of one request seed + i (imagesynth does; when
    # not known, each image is its own request with its own seed).
    endpoint: str | None = None
    remote_model: str | None = None
    api_key_env: str | None = None
    remote_timeout: float = 600.0
    remote_retries: int = 4
    remote_seed_offsets: bool = False
    # The OpenAI front's quality -> steps with real weights: [low, medium, high] (auto = high =
    # `steps`). Empty: low and medium are 40% and 60% of the default steps (demo weights too).
    quality_steps: tuple[int, ...] = ()
    # Filled from [styles] when `styles` is true; not a per-model TOML key.
    style_table: Mapping[str, Style] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_demo(self) -> bool:
        """Runs the demo weights: "demo", or "auto" left unresolved (no real weights found)."""
        return self.backend == "diffusers" and self.weights in (DEMO_WEIGHTS, AUTO_WEIGHTS)

    @property
    def default_steps(self) -> int:
        return self.demo_steps if self.is_demo else self.steps

    @property
    def messages_protocol(self) -> bool:
        """Its tasks are wan2.6's kind: their replies hold `choices`, not `results`."""
        return "image-generation" in self.endpoints

    def steps_for_quality(self, quality: str) -> int:
        """Denoising steps for an OpenAI `quality`: low, medium, high or auto (= high)."""
        default = self.default_steps
        if self.quality_steps and not self.is_demo:
            low, medium, high = self.quality_steps
        else:
            low, medium, high = (max(1, round(default * f)) for f in (0.4, 0.6, 1.0))
        return {"low": low, "medium": medium}.get(quality, high)

    def size_rule(self) -> str:
        if self.sizes:
            return "one of " + ", ".join(self.sizes)
        pixels = (
            f"W*H in [{_pixels(self.min_pixels)}, {_pixels(self.max_pixels)}] pixels"
            if self.min_pixels
            else f"W*H at most {_pixels(self.max_pixels)} pixels"
        )
        rule = f"W*H with each side in [{self.min_side}, {self.max_side}] and {pixels}"
        if self.max_aspect:
            rule += f" and an aspect ratio from 1:{self.max_aspect:g} to {self.max_aspect:g}:1"
        return rule

    def takes_size(self, text: str) -> bool:
        """Whether a "W*H" size is one this model makes."""
        try:
            width, height = parse_size(text)
        except ValueError:
            return False
        return text in self.sizes if self.sizes else self._size_fits(width, height)

    def _size_fits(self, width: int, height: int) -> bool:
        return (
            self.min_side <= width <= self.max_side
            and self.min_side <= height <= self.max_side
            and self.min_pixels <= width * height <= self.max_pixels
            and (not self.max_aspect or max(width, height) <= self.max_aspect * min(width, height))
        )

    def _validate_size(self, size: str | None) -> tuple[int, int]:
        text = self.default_size if size is None else size
        try:
            width, height = parse_size(text)
        except ValueError:
            raise InvalidParameter(
                f"size must be {self.size_rule()} for model {self.name}; got {text!r}"
            ) from None
        if not (text in self.sizes if self.sizes else self._size_fits(width, height)):
            raise InvalidParameter(
                f"size must be {self.size_rule()} for model {self.name}; got {text!r}"
            )
        return width, height

    def validate(
        self,
        *,
        prompt: str | None,
        negative_prompt: str | None = None,
        size: str | None = None,
        n: int | None = None,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        prompt_extend: bool | None = None,
        watermark: bool | None = None,
        style: str | None = None,
        has_reference: bool = False,
        ref_strength: float | None = None,
        ref_mode: str | None = None,
        output_format: str | None = None,
        output_compression: int | None = None,
        partial_images: int | None = None,
        user: str | None = None,
    ) -> GenerationParams:
        if prompt is None or not prompt.strip():
            raise InvalidParameter("Field required: input.prompt")
        width, height = self._validate_size(size)
        if n is None:
            n = self.n_default
        if not 1 <= n <= self.n_max:
            if self.n_max == 1:
                raise InvalidParameter(f"n must be 1 for model {self.name}; got {n}")
            raise InvalidParameter(f"n must be in [1, {self.n_max}] for {self.name}; got {n}")
        if seed is None:
            seed = secrets.randbelow(SEED_MAX - self.n_max + 2)
        elif not 0 <= seed <= SEED_MAX:
            raise InvalidParameter(f"seed must be in [0, {SEED_MAX}]; got {seed}")
        if steps is None:
            steps = self.default_steps
        elif not 1 <= steps <= self.max_steps:
            raise InvalidParameter(
                f"steps must be in [1, {self.max_steps}] for {self.name}; got {steps}"
            )
        if not self.styles:
            style = None  # as on DashScope, models without styles ignore the parameter
        elif style is not None and style not in self.style_table:
            raise InvalidParameter(
                f"style must be one of {', '.join(self.style_table)}; got {style!r}"
            )
        if guidance is None:
            chosen = self.style_table[style] if style is not None else None
            guidance = (
                self.guidance if chosen is None or chosen.guidance is None else chosen.guidance
            )
        elif not self.guidance_min <= guidance <= self.guidance_max:
            raise InvalidParameter(
                f"guidance must be in [{self.guidance_min}, {self.guidance_max}] "
                f"for {self.name}; got {guidance}"
            )
        if not has_reference:
            ref_strength = ref_mode = None
        elif not self.reference_images:
            raise InvalidParameter(f"Model {self.name} does not take a reference image (ref_img)")
        else:
            ref_strength = DEFAULT_REF_STRENGTH if ref_strength is None else ref_strength
            if not 0.0 <= ref_strength <= 1.0:
                raise InvalidParameter(f"ref_strength must be in [0.0, 1.0]; got {ref_strength}")
            ref_mode = ref_mode or "repaint"
            if ref_mode not in REF_MODES:
                raise InvalidParameter(
                    f"ref_mode must be one of {', '.join(REF_MODES)}; got {ref_mode!r}"
                )
        fmt = _output_format(output_format)
        if output_compression is not None and not 0 <= output_compression <= 100:
            raise InvalidParameter(
                f"output_compression must be in [0, 100]; got {output_compression}"
            )
        if partial_images is not None and not 0 <= partial_images <= MAX_PARTIAL_IMAGES:
            raise InvalidParameter(
                f"partial_images must be in [0, {MAX_PARTIAL_IMAGES}]; got {partial_images}"
            )
        if user is not None and len(user) > MAX_USER_CHARS:
            raise InvalidParameter(f"user must be at most {MAX_USER_CHARS} characters")
        # The docs say over-long prompts are truncated, not rejected.
        return GenerationParams(
            prompt=prompt[: self.prompt_max_chars],
            negative_prompt=(negative_prompt or "")[: self.negative_prompt_max_chars],
            width=width,
            height=height,
            n=n,
            seed=seed,
            steps=steps,
            guidance=float(guidance),
            prompt_extend=self.prompt_extend_default if prompt_extend is None else prompt_extend,
            watermark=bool(watermark),
            style=style,
            ref_strength=None if ref_strength is None else float(ref_strength),
            ref_mode=ref_mode,
            output_format=fmt,
            output_compression=output_compression if fmt != "png" else None,
            partial_images=partial_images or 0,
            user=user,
        )


MAX_USER_CHARS = 256


def _output_format(name: str | None) -> OutputFormat:
    for fmt in OUTPUT_FORMATS:
        if name is None or name == fmt:
            return fmt
    raise InvalidParameter(
        f"output_format must be one of {', '.join(OUTPUT_FORMATS)}; got {name!r}"
    )


@dataclass(frozen=True)
class Billing:
    """The catalog's [billing] table: what model prices are in, and how long free quota lasts."""

    currency: str = "CNY"
    free_quota_days: int = 90


class Catalog:
    def __init__(
        self,
        models: dict[str, ModelSpec],
        source: str,
        styles: Mapping[str, Style] | None = None,
        billing: Billing | None = None,
    ) -> None:
        self.models = models
        self.source = source
        self.styles = dict(styles or {})
        self.billing = billing or Billing()

    def get(self, name: str | None) -> ModelSpec:
        spec = self.models.get(name or "")
        if spec is None:
            raise ModelNotFound()
        return spec

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        if path is None:
            text = resources.files("imagesynth").joinpath("default_catalog.toml").read_text()
            source = "built-in"
        else:
            text = path.read_text(encoding="utf-8")
            source = str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(f"{source}: {exc}") from None
        styles = _parse_styles(data.get("styles", {}), source)
        models = _parse_models(data.get("models", {}), source, styles)
        return cls(models, source, styles, _parse_billing(data.get("billing", {}), source))


def _has_type(value: object, annotation: object) -> bool:
    """Whether a TOML value fits a ModelSpec field (annotations are strings here)."""
    expected = {
        "str": (str,),
        "str | None": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "Family": (str,),
        "Backend": (str,),
        "tuple[str, ...]": (tuple,),
        "tuple[int, ...]": (tuple,),
        "Mapping[str, Style]": (dict,),
        "Offload": (str,),
        "Cache": (str,),
        "SchedulerSettings": (tuple,),  # checked by _scheduler_settings
    }[str(annotation)]
    if isinstance(value, bool) and bool not in expected:
        return False
    if isinstance(value, tuple) and str(annotation) == "tuple[str, ...]":
        return all(isinstance(v, str) for v in value)
    if isinstance(value, tuple) and str(annotation) == "tuple[int, ...]":
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, expected)


def _parse_styles(raw: dict[str, Any], source: str) -> dict[str, Style]:
    known = {f.name for f in fields(Style)} - {"name"}
    styles: dict[str, Style] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) - known:
            raise CatalogError(f"{source}: style {name}: keys must be among {sorted(known)}")
        if not isinstance(entry.get("prompt", "{prompt}"), str) or "{prompt}" not in entry.get(
            "prompt", "{prompt}"
        ):
            raise CatalogError(f"{source}: style {name}: prompt must contain {{prompt}}")
        if not isinstance(entry.get("negative_prompt", ""), str):
            raise CatalogError(f"{source}: style {name}: negative_prompt must be a string")
        guidance = entry.get("guidance")
        if guidance is not None and (
            isinstance(guidance, bool) or not isinstance(guidance, int | float)
        ):
            raise CatalogError(f"{source}: style {name}: guidance must be a number")
        lora = entry.get("lora")
        if lora is not None and not (
            isinstance(lora, str) and lora.endswith(".safetensors") and Path(lora).is_absolute()
        ):
            raise CatalogError(
                f"{source}: style {name}: lora must be an absolute path to a .safetensors file"
            )
        lora_scale = entry.get("lora_scale", 1.0)
        if isinstance(lora_scale, bool) or not isinstance(lora_scale, int | float):
            raise CatalogError(f"{source}: style {name}: lora_scale must be a number")
        if "lora_scale" in entry and lora is None:
            raise CatalogError(f"{source}: style {name}: lora_scale needs lora")
        styles[name] = Style(name=name, **entry)
    return styles


def _parse_billing(raw: dict[str, Any], source: str) -> Billing:
    known = {f.name for f in fields(Billing)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise CatalogError(f"{source}: [billing] keys must be among {sorted(known)}")
    currency = raw.get("currency", Billing.currency)
    days = raw.get("free_quota_days", Billing.free_quota_days)
    if not isinstance(currency, str) or not currency.strip():
        raise CatalogError(f"{source}: [billing] currency must be a non-empty string")
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise CatalogError(f"{source}: [billing] free_quota_days must be an integer >= 0")
    return Billing(currency=currency, free_quota_days=days)


def _check_image_adapters(spec: ModelSpec, entry: Mapping[str, Any], where: str) -> None:
    """The model's IP-Adapter keys, and its styles' LoRAs, fit together and fit the model."""
    options = sorted(k for k in entry if k.startswith("ip_adapter_"))
    if spec.ip_adapter is None:
        if options:
            raise CatalogError(f"{where}: {', '.join(options)} need ip_adapter")
    elif spec.family != "stable-diffusion":
        raise CatalogError(f"{where}: ip_adapter is for family stable-diffusion only")
    elif not spec.reference_images:
        raise CatalogError(f"{where}: ip_adapter needs reference_images = true")
    elif spec.ip_adapter == DEMO_WEIGHTS:
        if not spec.is_demo:
            raise CatalogError(f'{where}: ip_adapter = "demo" fits only weights = "demo" or "auto"')
        if options:
            raise CatalogError(f'{where}: ip_adapter = "demo" sets {", ".join(options)} itself')
    elif not spec.ip_adapter.strip():
        raise CatalogError(f'{where}: ip_adapter must be a folder, a hub id or "demo"')
    elif not spec.ip_adapter_weight_name:
        raise CatalogError(f"{where}: ip_adapter needs ip_adapter_weight_name")
    if spec.family != "stable-diffusion" and any(s.lora for s in spec.style_table.values()):
        raise CatalogError(f"{where}: style LoRAs are for family stable-diffusion only")


def _is_repo_id(text: str) -> bool:
    """An `org/name` hub id (not a path, not a URL)."""
    parts = text.split("/")
    return len(parts) == 2 and all(p and p.strip() == p and p not in (".", "..") for p in parts)


def _scheduler_settings(raw: object, where: str) -> SchedulerSettings:
    """A [scheduler] table as (name, value) pairs in name order (one spec per set of settings,
    however the file orders them)."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: scheduler must be a table of scheduler settings")
    settings: list[tuple[str, SchedulerValue]] = []
    for key, value in sorted(raw.items()):
        if not isinstance(value, str | int | float | bool):
            raise CatalogError(
                f"{where}: scheduler.{key} must be a string, number or boolean "
                f'("{SCHEDULER_NONE}" for None)'
            )
        settings.append((key, None if value == SCHEDULER_NONE else value))
    return tuple(settings)


def _check_levers(spec: ModelSpec, entry: Mapping[str, Any], where: str) -> None:
    """The model's speed levers have known values, fit together and fit its family and device."""
    if spec.distill_lora is not None and not (
        spec.distill_lora.endswith(".safetensors") and Path(spec.distill_lora).is_absolute()
    ):
        raise CatalogError(f"{where}: distill_lora must be an absolute path to a .safetensors file")
    if "distill_lora_scale" in entry and spec.distill_lora is None:
        raise CatalogError(f"{where}: distill_lora_scale needs distill_lora")
    if spec.offload not in OFFLOADS:
        raise CatalogError(f"{where}: offload must be one of {', '.join(OFFLOADS)}")
    if spec.offload != "none" and spec.device == "cpu":
        raise CatalogError(
            f'{where}: offload = "{spec.offload}" needs an accelerator to offload onto, '
            'not device = "cpu"'
        )
    if spec.attention not in ATTENTION_BACKENDS:
        raise CatalogError(
            f"{where}: attention must be one of {', '.join(ATTENTION_BACKENDS)}; "
            f"got {spec.attention!r}"
        )
    if spec.attention != "default" and spec.family not in ATTENTION_FAMILIES:
        raise CatalogError(
            f"{where}: attention is for families {', '.join(ATTENTION_FAMILIES)}: "
            f"the {spec.family} denoiser's attention does not go through diffusers' dispatcher"
        )
    if spec.cache not in CACHES:
        raise CatalogError(f"{where}: cache must be one of {', '.join(CACHES)}")
    if spec.cache != "none" and spec.family not in CACHE_FAMILIES:
        raise CatalogError(
            f'{where}: cache = "{spec.cache}" is for families {", ".join(CACHE_FAMILIES)}: '
            f"the {spec.family} denoiser has no cache support in diffusers"
        )
    if "cache_threshold" in entry and spec.cache == "none":
        raise CatalogError(f"{where}: cache_threshold needs cache")
    if spec.cache_threshold <= 0:
        raise CatalogError(f"{where}: cache_threshold must be > 0")


def _check_remote(spec: ModelSpec, where: str) -> None:
    if spec.backend != "openai-images":
        if spec.endpoint is not None:
            raise CatalogError(f'{where}: endpoint is for backend = "openai-images"')
        return
    if not spec.endpoint or not spec.endpoint.startswith(("http://", "https://")):
        raise CatalogError(f'{where}: backend openai-images needs endpoint = "http(s)://.../v1"')
    if spec.reference_images or spec.styles:
        raise CatalogError(f"{where}: a remote engine takes no reference images or styles")
    if spec.remote_timeout <= 0 or spec.remote_retries < 0:
        raise CatalogError(f"{where}: need remote_timeout > 0 and remote_retries >= 0")


def _parse_models(
    raw: dict[str, Any], source: str, styles: Mapping[str, Style]
) -> dict[str, ModelSpec]:
    known = {f.name for f in fields(ModelSpec)} - {"name", "style_table"}
    models: dict[str, ModelSpec] = {}
    for name, entry in raw.items():
        unknown = set(entry) - known
        if unknown:
            raise CatalogError(f"{source}: model {name}: unknown keys {sorted(unknown)}")
        if entry.get("family") not in FAMILIES:
            raise CatalogError(f"{source}: model {name}: family must be one of {FAMILIES}")
        if entry.get("backend", "diffusers") not in BACKENDS:
            raise CatalogError(f"{source}: model {name}: backend must be one of {BACKENDS}")
        values = dict(entry)
        sizes = values.get("sizes", [])
        if not isinstance(sizes, list):
            raise CatalogError(f"{source}: model {name}: bad sizes {sizes!r}: need a list")
        for size in [*sizes, values.get("default_size")]:
            try:
                if size is not None:
                    parse_size(size)
            except ValueError:
                raise CatalogError(f"{source}: model {name}: bad size {size!r}") from None
        values["sizes"] = tuple(sizes)
        endpoints = values.get("endpoints", ["text2image"])
        if (
            not isinstance(endpoints, list)
            or not endpoints
            or any(e not in ENDPOINTS for e in endpoints)
        ):
            raise CatalogError(
                f"{source}: model {name}: endpoints must be a non-empty list of {ENDPOINTS}"
            )
        values["endpoints"] = tuple(endpoints)
        if "quality_steps" in values:
            quality = values["quality_steps"]
            if (
                not isinstance(quality, list)
                or len(quality) != 3
                or any(isinstance(q, bool) or not isinstance(q, int) or q < 1 for q in quality)
            ):
                raise CatalogError(
                    f"{source}: model {name}: quality_steps must be [low, medium, high] steps"
                )
            values["quality_steps"] = tuple(quality)
        if "scheduler" in values:
            values["scheduler"] = _scheduler_settings(
                values["scheduler"], f"{source}: model {name}"
            )
        for f in fields(ModelSpec):
            if f.name in values and not _has_type(values[f.name], f.type):
                raise CatalogError(f"{source}: model {name}: {f.name} must be {f.type}")
        spec = ModelSpec(name=name, **values)
        if spec.styles:
            if not styles:
                raise CatalogError(f"{source}: model {name}: styles = true but no [styles]")
            spec = dataclasses.replace(spec, style_table=styles)
        if spec.sizes and spec.default_size not in spec.sizes:
            raise CatalogError(f"{source}: model {name}: default_size must be one of sizes")
        if not spec.sizes and not spec._size_fits(*parse_size(spec.default_size)):
            raise CatalogError(
                f"{source}: model {name}: default_size must fit the size rule: {spec.size_rule()}"
            )
        if spec.sync and "text2image" not in spec.endpoints:
            raise CatalogError(f"{source}: model {name}: sync is about the text2image endpoint")
        if not 1 <= spec.n_default <= spec.n_max:
            raise CatalogError(f"{source}: model {name}: need 1 <= n_default <= n_max")
        if spec.rps <= 0 or spec.in_flight < 1 or spec.price < 0 or spec.free_quota < 0:
            raise CatalogError(
                f"{source}: model {name}: need rps > 0, in_flight >= 1, price >= 0, free_quota >= 0"
            )
        _check_remote(spec, f"{source}: model {name}")
        if spec.weights == AUTO_WEIGHTS and spec.repo is not None and not _is_repo_id(spec.repo):
            raise CatalogError(
                f"{source}: model {name}: repo must be a hub id such as Qwen/Qwen-Image; "
                f"got {spec.repo!r}"
            )
        _check_image_adapters(spec, entry, f"{source}: model {name}")
        _check_levers(spec, entry, f"{source}: model {name}")
        models[name] = spec
    if not models:
        raise CatalogError(f"{source}: no models defined")
    return models
