"""The speed levers (engine/diffusers/levers.py) on the tiny demo pipelines, on the CPU: each
lever's code path runs for real, and its effect shows in the pixels. What needs a GPU (CPU
offload onto one) is refused on the CPU, and its test skips there, saying why."""

from __future__ import annotations

import math
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagesynth.domain import Family, Offload
from imagesynth.engine.base import Engine, EngineSpec, GenerationBatch, Levers
from imagesynth.engine.diffusers.levers import attention_processors, place
from imagesynth.engine.registry import create_engine

# Qwen-Image-Lightning's scheduler (ModelTC/Qwen-Image-Lightning, generate_with_diffusers.py),
# as the catalog hands it over: (name, value) pairs in name order.
LIGHTNING_SCHEDULER = (
    ("base_image_seq_len", 256),
    ("base_shift", math.log(3)),
    ("invert_sigmas", False),
    ("max_image_seq_len", 8192),
    ("max_shift", math.log(3)),
    ("shift", 1.0),
    ("shift_terminal", None),
    ("stochastic_sampling", False),
    ("time_shift_type", "exponential"),
    ("use_beta_sigmas", False),
    ("use_dynamic_shifting", True),
    ("use_exponential_sigmas", False),
    ("use_karras_sigmas", False),
)
SIZE = (96, 64)


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("network access")


LoadEngine = Callable[..., Engine]


@pytest.fixture(scope="module")
def load_engine(demo_root: Path) -> LoadEngine:
    """Load a CPU engine for a family's demo weights (or `weights`) with the given levers."""

    def load(family: Family, weights: Path | None = None, **levers: Any) -> Engine:
        spec = EngineSpec(
            family, str(weights or demo_root / family), device="cpu", levers=Levers(**levers)
        )
        engine = create_engine(spec)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(socket.socket, "connect", _no_network)
            engine.load()
        return engine

    return load


def generate(engine: Engine, seed: int = 3, steps: int = 2, guidance: float = 1.0) -> np.ndarray:
    batch = GenerationBatch(
        prompt="a cat on a red sofa",
        negative_prompt="",
        width=SIZE[0],
        height=SIZE[1],
        seeds=(seed,),
        steps=steps,
        guidance=guidance,
    )
    (image,) = engine.generate(batch, lambda done, total: None)
    return pixels(image)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


def pipe_of(engine: Engine) -> Any:
    """The engine's diffusers pipeline: where a lever's setting itself can be seen."""
    return engine._pipe  # type: ignore[attr-defined]


# -- a step-distilled LoRA and its scheduler ---------------------------------------------------


@pytest.fixture(scope="module")
def distill_lora(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA for the demo Qwen-Image transformer, saved as diffusers saves one (the
    layout a Lightning LoRA converts to when diffusers loads it)."""
    import torch
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = QwenImageTransformer2DModel.from_pretrained(
        demo_root / "qwen-image" / "transformer"
    )
    targets = ["to_q", "to_k", "to_v", "to_out.0", "img_mlp.net.2", "txt_mlp.net.2"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer.add_adapter(LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(transformer))
    # Far larger than a random init, so that the LoRA shows clearly in the demo's noise (about
    # half as much as another seed does).
    state = {k: v * 50 if ".up." in k else v for k, v in state.items()}
    folder = tmp_path_factory.mktemp("distill")
    QwenImagePipeline.save_lora_weights(
        folder, transformer_lora_layers=state, weight_name="lightning.safetensors"
    )
    return folder / "lightning.safetensors"


def test_a_distill_lora_is_fused_at_load_and_changes_every_image(
    load_engine: LoadEngine, distill_lora: Path
) -> None:
    import torch

    base = generate(load_engine("qwen-image"))
    engine = load_engine("qwen-image", distill_lora=str(distill_lora))
    distilled = generate(engine)
    assert mean_diff(distilled, base) > 3, mean_diff(distilled, base)
    # Fused: plain Linear layers again, no adapter to switch or to pay for at each step.
    attn = pipe_of(engine).transformer.transformer_blocks[0].attn
    assert type(attn.to_q) is torch.nn.Linear
    # At a lower scale it steers less.
    faint = generate(
        load_engine("qwen-image", distill_lora=str(distill_lora), distill_lora_scale=0.25)
    )
    assert 0 < mean_diff(faint, base) < 0.6 * mean_diff(distilled, base)
    assert max_diff(generate(engine), distilled) <= 1  # the same on every call


def test_scheduler_settings_replace_the_pipelines_own(load_engine: LoadEngine) -> None:
    engine = load_engine("qwen-image", scheduler=LIGHTNING_SCHEDULER)
    scheduler = pipe_of(engine).scheduler
    assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"  # the same class
    config = scheduler.config
    assert (config.base_shift, config.max_shift) == (math.log(3), math.log(3))
    assert (config.use_dynamic_shifting, config.shift_terminal, config.max_image_seq_len) == (
        True,
        None,
        8192,
    )
    # The demo's own scheduler does not shift its sigmas; Lightning's shifts them by its fixed
    # mu = log(3) (exponential time shift: sigma -> 3 sigma / (1 + 2 sigma)).
    shifted = generate(engine, steps=4)
    sigmas = pipe_of(engine).scheduler.sigmas[:-1].numpy()
    own = load_engine("qwen-image")
    base = generate(own, steps=4)
    own_sigmas = pipe_of(own).scheduler.sigmas[:-1].numpy()
    np.testing.assert_allclose(sigmas, 3 * own_sigmas / (1 + 2 * own_sigmas), rtol=1e-5)
    assert mean_diff(shifted, base) > 0.2, mean_diff(shifted, base)


def test_lightning_lora_and_scheduler_together(load_engine: LoadEngine, distill_lora: Path) -> None:
    lora_only = generate(load_engine("qwen-image", distill_lora=str(distill_lora)))
    engine = load_engine(
        "qwen-image", distill_lora=str(distill_lora), scheduler=LIGHTNING_SCHEDULER
    )
    assert pipe_of(engine).scheduler.config.use_dynamic_shifting is True
    assert mean_diff(generate(engine, steps=4), generate(engine, steps=2)) > 0
    assert mean_diff(generate(engine), lora_only) > 1


def test_an_unknown_scheduler_setting_fails_the_load_naming_it(load_engine: LoadEngine) -> None:
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler has no setting shfit"):
        load_engine("qwen-image", scheduler=(("shfit", 3.0),))


def test_a_missing_distill_lora_fails_the_load(load_engine: LoadEngine, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="distill_lora: no file"):
        load_engine("qwen-image", distill_lora=str(tmp_path / "gone.safetensors"))


# -- attention backend -------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen-image", "wan", "z-image"])
def test_an_attention_backend_that_runs_on_the_cpu_keeps_the_pixels(
    load_engine: LoadEngine, family: Family
) -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry.get_active_backend()[0]
    base = generate(load_engine(family))
    engine = load_engine(family, attention="_native_math")
    processors = attention_processors(pipe_of(engine).transformer)
    assert {str(p._attention_backend.value) for p in processors} == {"_native_math"}
    # The math kernel instead of the fused one: the same images up to float rounding.
    assert max_diff(generate(engine), base) <= 2
    # The process-wide default stays as it was, for the models that keep "default".
    assert _AttentionBackendRegistry.get_active_backend()[0] == before


def test_an_attention_backend_needs_a_dispatching_denoiser(load_engine: LoadEngine) -> None:
    with pytest.raises(ValueError, match="UNet2DConditionModel's attention does not go through"):
        load_engine("stable-diffusion", attention="native")


# -- First Block Cache -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_block_qwen(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo Qwen-Image weights with a two-block transformer: First Block Cache compares the
    first block's output and skips the rest, so it needs a second (the demo has one)."""
    import torch
    from diffusers import QwenImageTransformer2DModel

    folder = tmp_path_factory.mktemp("qwen-two-blocks") / "qwen-image"
    shutil.copytree(demo_root / "qwen-image", folder)
    config = dict(QwenImageTransformer2DModel.load_config(folder / "transformer"))
    config["num_layers"] = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = QwenImageTransformer2DModel.from_config(config)
    transformer.save_pretrained(folder / "transformer")
    return folder


@contextmanager
def count_runs(module: Any) -> Iterator[list[int]]:
    """One entry per time `module` runs inside the block."""
    runs: list[int] = []
    handle = module.register_forward_hook(lambda *args: runs.append(1))
    try:
        yield runs
    finally:
        handle.remove()


def test_first_block_cache_skips_blocks_above_its_threshold(
    load_engine: LoadEngine, two_block_qwen: Path
) -> None:
    base = generate(load_engine("qwen-image", two_block_qwen), steps=3)
    # Below any change between steps: every block runs each step, the images are the same.
    exact = load_engine("qwen-image", two_block_qwen, cache="first-block", cache_threshold=1e-9)
    with count_runs(pipe_of(exact).transformer.transformer_blocks[1].attn) as runs:
        assert max_diff(generate(exact, steps=3), base) <= 1
    assert runs == [1, 1, 1]
    # Above every change: after the first step the second block's work is reused.
    loose = load_engine("qwen-image", two_block_qwen, cache="first-block", cache_threshold=100.0)
    with count_runs(pipe_of(loose).transformer.transformer_blocks[1].attn) as runs:
        cached = generate(loose, steps=3)
    assert runs == [1]
    assert mean_diff(cached, base) > 0.05, mean_diff(cached, base)
    assert max_diff(generate(loose, steps=3), cached) <= 1  # the cache starts afresh each call


def test_first_block_cache_needs_two_blocks_and_cache_support(load_engine: LoadEngine) -> None:
    with pytest.raises(ValueError, match="QwenImageTransformer2DModel has 1 block; it needs 2"):
        load_engine("qwen-image", cache="first-block")
    with pytest.raises(ValueError, match="ZImageTransformer2DModel has no cache support"):
        load_engine("z-image", cache="first-block")


# -- CPU offload -------------------------------------------------------------------------------


def test_offload_is_refused_on_the_cpu_before_loading(demo_root: Path, tmp_path: Path) -> None:
    # No weights there at all: the refusal comes before any loading.
    for offload in ("model", "sequential"):
        spec = EngineSpec(
            "qwen-image", str(tmp_path / "absent"), device="cpu", levers=Levers(offload=offload)
        )
        with pytest.raises(ValueError, match=f'offload = "{offload}" needs an accelerator'):
            create_engine(spec).load()


def offloaded_qwen(demo_root: Path, offload: Offload) -> Any:
    """The demo Qwen-Image pipeline placed by the levers' own placement step, onto the CPU
    (which a load refuses, as pointless, but which runs diffusers' offload code for real)."""
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(demo_root / "qwen-image", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return place(pipe, offload, "cpu")


def test_offload_installs_diffusers_offload_hooks(demo_root: Path) -> None:
    model = offloaded_qwen(demo_root, "model").transformer
    # accelerate's hook moves the whole model onto the device before it runs, and back after.
    assert hasattr(model, "_hf_hook")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    sequential = offloaded_qwen(demo_root, "sequential").transformer
    # Layer by layer: between runs the weights are nowhere on the device.
    assert {p.device.type for p in sequential.parameters()} == {"meta"}


def test_model_offload_keeps_the_pixels(load_engine: LoadEngine, demo_root: Path) -> None:
    # Sequential offload cannot run a call onto the CPU: diffusers names the device "cpu:0",
    # and accelerate then leaves a layer's weight a plain tensor that it cannot move back. The
    # GPU test below runs it.
    base = generate(load_engine("qwen-image"))
    # The engine's own generate, around the offloaded pipeline.
    engine = create_engine(EngineSpec("qwen-image", str(demo_root / "qwen-image")))
    engine._pipe = offloaded_qwen(demo_root, "model")  # type: ignore[attr-defined]
    assert max_diff(generate(engine), base) <= 1


def test_offload_onto_a_gpu(demo_root: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: offload onto a GPU cannot run here (refusal tested above)")
    for offload in ("model", "sequential"):
        spec = EngineSpec(
            "qwen-image",
            str(demo_root / "qwen-image"),
            device="cuda",
            dtype="float32",
            levers=Levers(offload=offload),
        )
        engine = create_engine(spec)
        engine.load()
        generate(engine)
        # Between calls the transformer is back off the GPU.
        devices = {p.device.type for p in pipe_of(engine).transformer.parameters()}
        assert "cuda" not in devices, devices


# -- torch.compile -----------------------------------------------------------------------------


def _compile_unavailable() -> str | None:
    """Why torch.compile (inductor, which builds C++ on the CPU) cannot run here, or None."""
    import torch
    from torch._inductor import cpp_builder

    if not torch._dynamo.is_inductor_supported():
        return "torch.compile's inductor backend is not supported on this platform"
    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # the kind of error differs by platform and torch version
        return f"no C++ compiler for torch.compile's inductor on the CPU: {exc}"
    return None


def test_compile_compiles_the_repeated_blocks_and_keeps_the_pixels(
    load_engine: LoadEngine,
) -> None:
    reason = _compile_unavailable()
    if reason:
        pytest.skip(reason)
    # Stable Diffusion's: the cheapest blocks to compile (~3 s; ~15 s with a cold inductor cache).
    base = generate(load_engine("stable-diffusion"), steps=1)
    engine = load_engine("stable-diffusion", compile=True)
    unet = pipe_of(engine).unet
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert max_diff(generate(engine, steps=1), base) <= 1
