"""The engine with tiny real pipelines built offline: sizes, seeds, progress, cancellation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagesynth.engine.base import (
    FAMILIES,
    Adapter,
    EngineSpec,
    Family,
    GenerationBatch,
    StepCallback,
    resolve_device,
    resolve_dtype,
)
from imagesynth.engine.demo import MARKER, VERSION, build_demo_weights, is_demo_weights
from imagesynth.engine.registry import create_adapter

# Real DashScope sizes that are not multiples of what the models generate at.
AWKWARD: dict[Family, tuple[int, int]] = {
    "qwen-image": (1472, 1140),
    "wan": (1000, 600),
    "stable-diffusion": (720, 1280),
}
SMALL = (200, 136)  # awkward for every family, and fast


class Cancelled(Exception):
    pass


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("network access")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        build_demo_weights(root)
    return root


@pytest.fixture(scope="module")
def adapters(demo_root: Path) -> dict[Family, Adapter]:
    loaded: dict[Family, Adapter] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        for family in FAMILIES:
            # CPU whatever the machine: the tolerances below are for float32.
            adapter = create_adapter(EngineSpec(family, str(demo_root / family), device="cpu"))
            adapter.load()
            loaded[family] = adapter
    return loaded


def generate(
    adapter: Adapter,
    seeds: tuple[int, ...],
    size: tuple[int, int] = SMALL,
    steps: int = 2,
    on_step: StepCallback | None = None,
    guidance: float = 4.0,
) -> list[Image.Image]:
    batch = GenerationBatch(
        prompt="a cat on a red sofa",
        negative_prompt="blurry",
        width=size[0],
        height=size[1],
        seeds=seeds,
        steps=steps,
        guidance=guidance,
    )
    return adapter.generate(batch, on_step or (lambda done, total: None))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_size_at_awkward_real_size(adapters: dict[Family, Adapter], family: Family) -> None:
    (image,) = generate(adapters[family], (1,), size=AWKWARD[family])
    assert image.mode == "RGB"
    assert image.size == AWKWARD[family]
    assert pixels(image).std() > 10, "demo images should be noise, not a flat colour"


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_same_pixels(adapters: dict[Family, Adapter], family: Family) -> None:
    (a,) = generate(adapters[family], (5,))
    (b,) = generate(adapters[family], (5,))
    assert np.abs(pixels(a) - pixels(b)).max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_each_image_of_a_batch_follows_its_own_seed(
    adapters: dict[Family, Adapter], family: Family
) -> None:
    batch = generate(adapters[family], (7, 8))
    (single,) = generate(adapters[family], (8,))
    assert [image.size for image in batch] == [SMALL, SMALL]
    assert np.abs(pixels(batch[1]) - pixels(single)).max() <= 1
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 5


@pytest.mark.parametrize("family", FAMILIES)
def test_on_step_sees_every_step(adapters: dict[Family, Adapter], family: Family) -> None:
    calls: list[tuple[int, int]] = []
    # Guidance 1 switches classifier-free guidance off: the pipelines' other branch.
    generate(adapters[family], (1,), steps=3, on_step=lambda d, t: calls.append((d, t)), guidance=1)
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("family", FAMILIES)
def test_raising_from_on_step_aborts_and_adapter_stays_usable(
    adapters: dict[Family, Adapter], family: Family
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


def test_registry_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="family"):
        create_adapter(EngineSpec("dall-e", "/nowhere"))  # type: ignore[arg-type]
