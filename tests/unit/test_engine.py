"""The engine with tiny real pipelines built offline: sizes, seeds, progress, cancellation,
reference images (IP-Adapter and fallback) and style LoRAs."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from imagesynth.catalog import Catalog, ModelSpec, Style
from imagesynth.db import SqlStores
from imagesynth.domain import FAMILIES, Family, GenerationParams, TaskStatus
from imagesynth.engine.base import (
    Engine,
    EngineSpec,
    GenerationBatch,
    IPAdapterWeights,
    LoraWeights,
    StepCallback,
)
from imagesynth.engine.diffusers.demo import (
    IP_ADAPTER_IMAGE_ENCODER,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT_NAME,
    MARKER,
    VERSION,
    build_demo_weights,
    is_demo_weights,
)
from imagesynth.engine.diffusers.pipelines import resolve_device, resolve_dtype
from imagesynth.engine.registry import UnknownEngine, create_engine
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.png import encode_png
from imagesynth.tasks.models import Task
from imagesynth.worker.worker import Worker

# Real DashScope sizes that are not multiples of what the models generate at.
AWKWARD: dict[Family, tuple[int, int]] = {
    "qwen-image": (1472, 1140),
    "wan": (1000, 600),
    "stable-diffusion": (720, 1280),
    "z-image": (2040, 520),  # z-image-turbo's longest side, at 1M pixels
}
SMALL = (200, 136)  # awkward for every family, and fast


class Cancelled(Exception):
    pass


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("network access")


def test_demo_weights_are_built_offline_for_every_family(demo_root: Path) -> None:
    # The session fixture built them with socket.connect cut off (tests/conftest.py).
    assert sorted(p.name for p in demo_root.iterdir() if not p.name.startswith(".")) == sorted(
        FAMILIES
    )
    assert all(is_demo_weights(demo_root / family) for family in FAMILIES)
    # A second build finds them current and leaves them as they are.
    before = {f: (demo_root / f / "model_index.json").stat().st_mtime_ns for f in FAMILIES}
    assert build_demo_weights(demo_root) == {f: demo_root / f for f in FAMILIES}
    after = {f: (demo_root / f / "model_index.json").stat().st_mtime_ns for f in FAMILIES}
    assert after == before


@pytest.fixture(scope="module")
def adapters(demo_root: Path) -> dict[Family, Engine]:
    loaded: dict[Family, Engine] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        for family in FAMILIES:
            # CPU whatever the machine: the tolerances below are for float32.
            adapter = create_engine(EngineSpec(family, str(demo_root / family), device="cpu"))
            adapter.load()
            loaded[family] = adapter
    return loaded


def generate(
    adapter: Engine,
    seeds: tuple[int, ...],
    size: tuple[int, int] = SMALL,
    steps: int = 2,
    on_step: StepCallback | None = None,
    guidance: float = 4.0,
    **options: Any,
) -> list[Image.Image]:
    """One call; `options` are further GenerationBatch fields (init_image, style_image, ...)."""
    batch = GenerationBatch(
        prompt="a cat on a red sofa",
        negative_prompt="blurry",
        width=size[0],
        height=size[1],
        seeds=seeds,
        steps=steps,
        guidance=guidance,
        **options,
    )
    return adapter.generate(batch, on_step or (lambda done, total: None))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_size_at_awkward_real_size(adapters: dict[Family, Engine], family: Family) -> None:
    (image,) = generate(adapters[family], (1,), size=AWKWARD[family])
    assert image.mode == "RGB"
    assert image.size == AWKWARD[family]
    assert pixels(image).std() > 10, "demo images should be noise, not a flat colour"


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_same_pixels(adapters: dict[Family, Engine], family: Family) -> None:
    (a,) = generate(adapters[family], (5,))
    (b,) = generate(adapters[family], (5,))
    assert np.abs(pixels(a) - pixels(b)).max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_each_image_of_a_batch_follows_its_own_seed(
    adapters: dict[Family, Engine], family: Family
) -> None:
    batch = generate(adapters[family], (7, 8))
    (single,) = generate(adapters[family], (8,))
    assert [image.size for image in batch] == [SMALL, SMALL]
    assert np.abs(pixels(batch[1]) - pixels(single)).max() <= 1
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 5


@pytest.mark.parametrize("family", FAMILIES)
def test_on_step_sees_every_step(adapters: dict[Family, Engine], family: Family) -> None:
    calls: list[tuple[int, int]] = []
    # Guidance 1 switches classifier-free guidance off: the pipelines' other branch.
    generate(adapters[family], (1,), steps=3, on_step=lambda d, t: calls.append((d, t)), guidance=1)
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("family", FAMILIES)
def test_raising_from_on_step_aborts_and_adapter_stays_usable(
    adapters: dict[Family, Engine], family: Family
) -> None:
    adapter = adapters[family]
    (before,) = generate(adapter, (3,), steps=3)
    calls: list[int] = []

    def cancel_at_two(done: int, total: int) -> None:
        calls.append(done)
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        generate(adapter, (3,), steps=3, on_step=cancel_at_two)
    assert calls == [1, 2]
    (after,) = generate(adapter, (3,), steps=3)
    assert np.abs(pixels(before) - pixels(after)).max() <= 1


def test_z_image_guides_only_above_guidance_1(adapters: dict[Family, Engine]) -> None:
    # The service's guidance is the usual CFG scale for every family: 0 (the catalog's
    # z-image-turbo default) and 1 both run without guidance, and then the negative prompt
    # is never read.
    adapter = adapters["z-image"]

    def run(guidance: float, negative_prompt: str = "blurry") -> Image.Image:
        batch = GenerationBatch("a cat", negative_prompt, *SMALL, (2,), steps=2, guidance=guidance)
        (image,) = adapter.generate(batch, lambda done, total: None)
        return image

    plain = run(0.0)
    assert max_diff(run(1.0), plain) <= 1
    assert max_diff(run(0.0, negative_prompt="a dog on a chair"), plain) <= 1
    guided = run(4.0)
    assert mean_diff(guided, plain) > 1, mean_diff(guided, plain)
    assert mean_diff(run(4.0, negative_prompt="a dog on a chair"), guided) > 1


def test_demo_folders_are_marked(demo_root: Path, tmp_path: Path) -> None:
    for family in FAMILIES:
        assert is_demo_weights(demo_root / family)
        assert is_demo_weights(str(demo_root / family))
        assert json.loads((demo_root / family / MARKER).read_text()) == {
            "demo": True,
            "family": family,
            "version": VERSION,
        }
    assert not is_demo_weights(tmp_path)
    assert not is_demo_weights(tmp_path / "missing")


def test_an_older_demo_build_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "wan"
    stale.mkdir()
    (stale / MARKER).write_text(json.dumps({"demo": True, "family": "wan"}))
    (stale / "old-weights.bin").write_bytes(b"old")
    build_demo_weights(tmp_path)
    assert not (stale / "old-weights.bin").exists()
    assert json.loads((stale / MARKER).read_text())["version"] == VERSION
    assert (stale / "model_index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FAMILIES)


def test_build_is_idempotent(demo_root: Path) -> None:
    def snapshot() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in demo_root.rglob("*")}

    before = snapshot()
    assert build_demo_weights(demo_root) == {family: demo_root / family for family in FAMILIES}
    assert snapshot() == before
    assert sorted(os.listdir(demo_root)) == sorted(FAMILIES)  # no temporary folders left


def test_build_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / FAMILIES[0]).mkdir()
    with pytest.raises(FileExistsError):
        build_demo_weights(tmp_path)


def test_auto_device_and_dtype() -> None:
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    assert resolve_dtype("auto", "cuda:0", cuda_auto="float16") is torch.float16
    assert resolve_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("fp8", "cpu")


def test_registry_imports_no_torch() -> None:
    code = (
        "import sys, imagesynth.engine.registry\n"
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_rejects_unknown_family_and_backend() -> None:
    with pytest.raises(UnknownEngine, match="family 'dall-e'"):
        create_engine(EngineSpec("dall-e", "/nowhere"))  # type: ignore[arg-type]
    with pytest.raises(UnknownEngine, match="backend 'comfyui'"):
        create_engine(EngineSpec("wan", "/nowhere", backend="comfyui"))  # type: ignore[arg-type]


# -- wanx-v1 reference images: IP-Adapter (refonly) and its fallback -------------------------


def reference_drawing() -> Image.Image:
    """A picture with structure and colour, unlike the demo models' noise."""
    image = Image.new("RGB", (512, 512), (30, 90, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 60, 300, 330), fill=(250, 200, 20))
    draw.ellipse((220, 200, 480, 470), fill=(200, 30, 60))
    return image


def other_drawing() -> Image.Image:
    return ImageOps.mirror(ImageOps.invert(reference_drawing()))


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.fixture(scope="module")
def ip_adapter(demo_root: Path) -> Engine:
    """The demo Stable Diffusion pipeline with the demo IP-Adapter loaded into it."""
    sd = str(demo_root / "stable-diffusion")
    weights = IPAdapterWeights(
        path=sd,
        weight_name=IP_ADAPTER_WEIGHT_NAME,
        subfolder=IP_ADAPTER_SUBFOLDER,
        image_encoder=IP_ADAPTER_IMAGE_ENCODER,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        adapter = create_engine(
            EngineSpec("stable-diffusion", sd, device="cpu", ip_adapter=weights)
        )
        adapter.load()
    return adapter


def test_image_prompt_follows_the_reference(ip_adapter: Engine) -> None:
    def styled(image: Image.Image, scale: float = 1.0) -> Image.Image:
        (out,) = generate(ip_adapter, (5,), style_image=image, style_scale=scale)
        assert out.size == SMALL
        return out

    a, b = styled(reference_drawing()), styled(other_drawing())
    # Same seed, same prompt: only the reference differs, and the image with it ...
    assert mean_diff(a, b) > 2.0, mean_diff(a, b)
    # ... deterministically ...
    assert max_diff(a, styled(reference_drawing())) <= 1
    # ... and a lower scale lets the reference say less.
    weak = mean_diff(styled(reference_drawing(), 0.2), styled(other_drawing(), 0.2))
    assert weak < 0.6 * mean_diff(a, b), (weak, mean_diff(a, b))


def test_calls_without_a_reference_are_unchanged_by_the_ip_adapter(
    adapters: dict[Family, Engine], ip_adapter: Engine
) -> None:
    plain = adapters["stable-diffusion"]
    # Both branches of classifier-free guidance (the zero embeddings differ in shape), a batch.
    for guidance in (4.0, 1.0):
        with_adapter = generate(ip_adapter, (7, 8), guidance=guidance)
        without = generate(plain, (7, 8), guidance=guidance)
        assert all(max_diff(x, y) <= 1 for x, y in zip(with_adapter, without, strict=True))
    # Image to image (repaint) too, and the styled call before it leaves no scale behind.
    generate(ip_adapter, (5,), style_image=reference_drawing(), style_scale=1.0)
    start = reference_drawing().resize(SMALL)
    (a,) = generate(ip_adapter, (3,), init_image=start, strength=0.5)
    (b,) = generate(plain, (3,), init_image=start, strength=0.5)
    assert max_diff(a, b) <= 1


def test_a_style_image_needs_an_ip_adapter(adapters: dict[Family, Engine]) -> None:
    with pytest.raises(ValueError, match="IP-Adapter"):
        generate(adapters["stable-diffusion"], (1,), style_image=reference_drawing())


@pytest.fixture
def worker(tmp_path: Path, demo_root: Path) -> Worker:
    """A worker (never started) whose blob store holds the reference at refs/a.png."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.put("refs/a.png", encode_png(reference_drawing()))
    store = SqlStores.open(f"sqlite:///{tmp_path / 'q.db'}")
    return Worker(store.queue, blobs, Catalog.load(), demo_root, lease_seconds=30, poll_seconds=1)


def worker_batch(worker: Worker, spec: ModelSpec, **params: Any) -> GenerationBatch:
    """The batch the worker makes of a wanx-v1 task with these GenerationParams fields."""
    fields: dict[str, Any] = {
        "prompt": "a still life",
        "negative_prompt": "",
        "width": SMALL[0],
        "height": SMALL[1],
        "n": 1,
        "seed": 3,
        "steps": 2,
        "guidance": 4.0,
        "prompt_extend": False,
        "watermark": False,
        **params,
    }
    task = Task("t", "k", "wanx-v1", GenerationParams(**fields), TaskStatus.RUNNING, "r")
    return worker._batch(task, spec)


def test_worker_routes_references_by_mode_and_adapter(
    worker: Worker, adapters: dict[Family, Engine]
) -> None:
    with_adapter = worker.catalog.get("wanx-v1")
    assert with_adapter.ip_adapter == "demo"
    without = dataclasses.replace(with_adapter, ip_adapter=None)

    def batch(spec: ModelSpec, mode: str) -> GenerationBatch:
        return worker_batch(
            worker, spec, ref_image_key="refs/a.png", ref_strength=1.0, ref_mode=mode
        )

    styled = batch(with_adapter, "refonly")
    assert styled.init_image is None and styled.style_image is not None
    assert styled.style_scale == 1.0
    assert styled.style_image.size == reference_drawing().size
    repaint = batch(with_adapter, "repaint")
    assert repaint.style_image is None and repaint.init_image is not None
    assert repaint.strength == pytest.approx(0.1)
    # No adapter configured: the documented fallback, image to image from the blurred
    # reference, which still runs and takes the reference's colours.
    fallback = batch(without, "refonly")
    assert fallback.style_image is None and fallback.init_image is not None
    assert fallback.strength == pytest.approx(0.5)
    assert mean_diff(fallback.init_image, repaint.init_image) > 5
    plain = adapters["stable-diffusion"]
    (out,) = plain.generate(fallback, lambda done, total: None)
    (unreferenced,) = generate(plain, (3,))
    palette = pixels(fallback.init_image).mean(axis=(0, 1))
    assert out.size == SMALL
    assert (
        np.abs(pixels(out).mean(axis=(0, 1)) - palette).mean()
        < np.abs(pixels(unreferenced).mean(axis=(0, 1)) - palette).mean()
    )
    # ref_strength 0 still lets the reference in, weakly.
    weak = worker_batch(
        worker, with_adapter, ref_image_key="refs/a.png", ref_strength=0.0, ref_mode="refonly"
    )
    assert weak.style_scale == pytest.approx(0.2)


# -- wanx-v1 styles with a LoRA ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_file(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA for the demo UNet's attention layers, saved as diffusers saves one."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(demo_root / "stable-diffusion" / "unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        unet.add_adapter(LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    # Larger than a random init, so that the style shows clearly in the demo's noise.
    state = {k: v * 4 if ".up." in k else v for k, v in state.items()}
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=state, weight_name="ink.safetensors"
    )
    return folder / "ink.safetensors"


def test_a_style_lora_changes_the_image_only_when_asked(
    demo_root: Path, adapters: dict[Family, Engine], lora_file: Path
) -> None:
    sd = str(demo_root / "stable-diffusion")
    spec = EngineSpec(
        "stable-diffusion",
        sd,
        device="cpu",
        ip_adapter=IPAdapterWeights(
            sd, IP_ADAPTER_WEIGHT_NAME, IP_ADAPTER_SUBFOLDER, IP_ADAPTER_IMAGE_ENCODER
        ),
        # The same file under two styles: two adapters, each switched on alone.
        loras=(
            LoraWeights("<ink>", str(lora_file), 1.0),
            LoraWeights("<faint ink>", str(lora_file), 0.25),
        ),
    )
    adapter = create_engine(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        adapter.load()
    (base,) = generate(adapters["stable-diffusion"], (3,))
    (ink,) = generate(adapter, (3,), lora="<ink>")
    (faint,) = generate(adapter, (3,), lora="<faint ink>")
    (none,) = generate(adapter, (3,))
    assert mean_diff(ink, base) > 5, mean_diff(ink, base)
    assert 0 < mean_diff(faint, base) < 0.6 * mean_diff(ink, base)
    assert max_diff(none, base) <= 1  # off again after a styled call
    assert max_diff(generate(adapter, (3,), lora="<ink>")[0], ink) <= 1
    # A style's LoRA and a refonly reference together.
    (both,) = generate(adapter, (3,), lora="<ink>", style_image=reference_drawing(), style_scale=1)
    assert mean_diff(both, ink) > 1
    with pytest.raises(ValueError, match="LoRA"):
        generate(adapter, (3,), lora="<clay>")


def test_a_missing_lora_file_fails_the_load_naming_the_style(
    demo_root: Path, tmp_path: Path
) -> None:
    spec = EngineSpec(
        "stable-diffusion",
        str(demo_root / "stable-diffusion"),
        device="cpu",
        loras=(LoraWeights("<ink>", str(tmp_path / "gone.safetensors")),),
    )
    with pytest.raises(FileNotFoundError, match="<ink>"):
        create_engine(spec).load()


def test_worker_switches_on_the_styles_lora(worker: Worker) -> None:
    wanx = worker.catalog.get("wanx-v1")
    styles = {
        "<ink>": Style("<ink>", prompt="ink of {prompt}", lora="/loras/ink.safetensors"),
        "<auto>": Style("<auto>"),
    }
    spec = dataclasses.replace(wanx, style_table=styles)
    ink = worker_batch(worker, spec, style="<ink>")
    assert (ink.lora, ink.prompt) == ("<ink>", "ink of a still life")
    assert worker_batch(worker, spec, style="<auto>").lora is None
    assert worker_batch(worker, spec).lora is None


@pytest.mark.parametrize("family", FAMILIES)
def test_a_call_for_several_tasks_gives_each_image_its_own_prompt_and_seed(
    adapters: dict[Family, Engine], family: Family
) -> None:
    # The worker's batches: one call, one prompt (and negative prompt) per image.
    prompts = ("a cat on a red sofa", "a lighthouse at night, long exposure", "tea")
    negatives = ("blurry", "", "low quality, jpeg artefacts")
    together = generate(adapters[family], (5, 9, 5), prompts=prompts, negative_prompts=negatives)
    for image, prompt, negative, seed in zip(together, prompts, negatives, (5, 9, 5), strict=True):
        alone = GenerationBatch(
            prompt=prompt,
            negative_prompt=negative,
            width=SMALL[0],
            height=SMALL[1],
            seeds=(seed,),
            steps=2,
            guidance=4.0,
        )
        (single,) = adapters[family].generate(alone, lambda done, total: None)
        assert max_diff(image, single) <= 1, (prompt, seed)
    assert np.abs(pixels(together[0]) - pixels(together[1])).mean() > 5


@pytest.mark.parametrize("family", FAMILIES)
def test_previews_at_the_asked_steps_one_per_image(
    adapters: dict[Family, Engine], family: Family
) -> None:
    adapter = adapters[family]
    assert adapter.capabilities.previews
    seen: list[tuple[int, list[tuple[int, int]]]] = []
    batch = GenerationBatch(
        prompt="a cat",
        negative_prompt="",
        width=SMALL[0],
        height=SMALL[1],
        seeds=(1, 2),
        steps=3,
        guidance=4.0,
        preview_steps=(1, 2),
    )
    images = adapter.generate(
        batch,
        lambda done, total: None,
        lambda step, previews: seen.append((step, [p.size for p in previews])),
    )
    assert [step for step, _ in seen] == [1, 2]
    for _, sizes in seen:
        assert len(sizes) == 2  # one per image of the call
        w, h = sizes[0]
        assert 0 < w < images[0].width and 0 < h < images[0].height  # latent-sized, no decode
