"""weights = "auto": the entry's repo from a weights folder or the hub cache, else the demo
weights; explicit "demo", folders and hub ids as before; which files a pull fetches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagesynth.catalog import Catalog, CatalogError
from imagesynth.weights.hub import is_complete_pipeline, wanted
from imagesynth.weights.resolve import resolve_catalog

CATALOG = """
[models.auto-wan]
family = "wan"
repo = "org/tiny-wan"

[models.auto-wan-too]
family = "wan"
repo = "org/tiny-wan"

[models.absent]
family = "wan"
repo = "org/not-here"

[models.no-repo]
family = "wan"

[models.demo]
family = "wan"
weights = "demo"
repo = "org/tiny-wan"

[models.hub-id]
family = "wan"
weights = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

[models.sd]
family = "stable-diffusion"
repo = "org/tiny-sd"
reference_images = true
ip_adapter = "demo"
"""


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_auto_uses_a_weights_folder_else_the_demo_weights(
    tmp_path: Path, demo_root: Path, isolated_cache: Path
) -> None:
    folders = tmp_path / "weights"
    (folders / "org").mkdir(parents=True)
    (folders / "org" / "tiny-wan").symlink_to(demo_root / "wan")
    (folders / "tiny-sd").symlink_to(demo_root / "stable-diffusion")  # DIR/name works too
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG, encoding="utf-8")
    loaded = Catalog.load(path)
    assert all(s.is_demo for n, s in loaded.models.items() if n != "hub-id")  # unresolved

    catalog, choices = resolve_catalog(loaded, [folders])
    wan = catalog.get("auto-wan")
    assert wan.weights == str(demo_root / "wan") and not wan.is_demo
    assert wan.default_steps == wan.steps  # the real weights' steps, also in the API
    assert choices["auto-wan"].source == "folder" and choices["auto-wan-too"].real
    assert choices["absent"].source == "missing" and catalog.get("absent").is_demo
    assert choices["absent"].pull == "imagesynth models pull absent"
    assert "`imagesynth models pull absent` makes them real" in choices["absent"].describe()
    assert choices["no-repo"].pull is None and catalog.get("no-repo").is_demo
    assert choices["demo"].source == "demo" and catalog.get("demo").weights == "demo"
    assert choices["hub-id"].source == "hub"
    assert catalog.get("hub-id").weights == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    # Real SD weights cannot take the demo IP-Adapter: refonly falls back to img2img.
    assert catalog.get("sd").ip_adapter is None and not catalog.get("sd").is_demo


def test_the_built_in_catalog_names_a_repo_for_every_model(isolated_cache: Path) -> None:
    catalog, choices = resolve_catalog(Catalog.load())
    assert all(spec.repo for spec in catalog.models.values())
    assert catalog.get("qwen-image").repo == "Qwen/Qwen-Image"
    assert catalog.get("z-image-turbo").repo == "Tongyi-MAI/Z-Image-Turbo"
    assert all(c.source == "missing" for c in choices.values())  # an empty cache: demo
    assert catalog.get("wanx-v1").ip_adapter == "demo"


def test_a_repo_must_be_a_hub_id(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text('[models.x]\nfamily = "wan"\nrepo = "/models/wan"\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="repo must be a hub id"):
        Catalog.load(path)


def test_a_pull_fetches_only_what_the_pipeline_loads(tmp_path: Path, demo_root: Path) -> None:
    assert wanted("model_index.json", "stable-diffusion")
    assert wanted("unet/diffusion_pytorch_model.safetensors", "stable-diffusion")
    assert wanted("tokenizer/merges.txt", "stable-diffusion")
    assert wanted("text_encoder/model-00001-of-00002.safetensors", "qwen-image")
    assert wanted("transformer_2/config.json", "wan")
    for duplicate in (
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "v1-5-pruned-emaonly.safetensors",  # the single-file checkpoint
        "safety_checker/model.safetensors",  # the engine never loads it
        "text_encoder/flax_model.msgpack",
        "README.md",
    ):
        assert not wanted(duplicate, "stable-diffusion"), duplicate
    assert is_complete_pipeline(demo_root / "wan", "wan")
    assert not is_complete_pipeline(tmp_path, "wan")


def test_a_pipeline_missing_a_shard_is_not_complete(tmp_path: Path, demo_root: Path) -> None:
    import shutil

    folder = tmp_path / "wan"
    shutil.copytree(demo_root / "wan", folder)
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (folder / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "text_encoder" / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert not is_complete_pipeline(folder, "wan")
    (folder / "text_encoder" / "model-00002-of-00002.safetensors").write_bytes(b"")
    assert is_complete_pipeline(folder, "wan")


def test_a_remote_engine_keeps_its_endpoint(tmp_path: Path, isolated_cache: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        '[models.far]\nfamily = "qwen-image"\nbackend = "openai-images"\n'
        'endpoint = "http://gpu1:30000/v1"\n',
        encoding="utf-8",
    )
    catalog, choices = resolve_catalog(Catalog.load(path))
    assert choices["far"].source == "remote" and choices["far"].real
    assert not catalog.get("far").is_demo and catalog.get("far").weights == "auto"
    assert "a remote engine at http://gpu1:30000/v1" in choices["far"].describe()
