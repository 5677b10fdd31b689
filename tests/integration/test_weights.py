"""Real weights in one command: `imagesynth models pull` through huggingface_hub's own download
code against a local hub (tests/hub_server.py), `weights = "auto"` using what it fetched, fit
checks against a stated memory budget, and `imagesynth doctor` on this machine."""

from __future__ import annotations

import hashlib
import json
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesynth.catalog import Catalog
from imagesynth.config import Settings
from imagesynth.doctor import report
from imagesynth.weights.fit import HEADROOM, check_fit, estimate
from imagesynth.weights.resolve import resolve_catalog
from tests.hub_server import FakeHub, RepoFiles, fake_hub
from tests.integration.conftest import BIN, clean_environment, imagesynth_cli
from tests.integration.inprocess import InProcessService

REPO = "imagesynth-test/tiny-wan"
BIG_REPO = "imagesynth-test/tiny-wan-big"
# Past huggingface_hub's 10 MiB write chunk, so that a killed download leaves bytes behind.
PADDING = "text_encoder/padding.safetensors"
PADDING_BYTES = 11 * 1024 * 1024
STALL_AT = 10 * 1024 * 1024 + 512 * 1024  # the server stops sending here in the first run

CATALOG = f"""
[models.tiny-wan]
family = "wan"
repo = "{REPO}"
steps = 2
demo_steps = 1
sizes = ["256*256"]
default_size = "256*256"
n_max = 1
n_default = 1

[models.tiny-wan-big]
family = "wan"
repo = "{BIG_REPO}"
sizes = ["256*256"]
default_size = "256*256"
"""


def safetensors_file(path: Path, tensors: dict[str, tuple[str, list[int]]], data: bool) -> None:
    """A safetensors file with these (dtype, shape) tensors; without `data`, its header only
    (what the fit check reads)."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2, "U8": 1}
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + count * sizes[dtype]],
        }
        offset += count * sizes[dtype]
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if data:
            f.write(bytes(offset))


@pytest.fixture(scope="module")
def hub(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """The local hub with the demo Wan pipeline as REPO, and the same with an 11 MiB file as
    BIG_REPO."""
    big = tmp_path_factory.mktemp("big-repo")
    safetensors_file(big / PADDING, {"pad": ("U8", [PADDING_BYTES - 64])}, data=True)
    small = RepoFiles.from_folder(demo_root / "wan")
    padded = RepoFiles.from_folder(big)
    files = {**small.files, **padded.files}
    sha = hashlib.sha1(b"big" + small.sha.encode()).hexdigest()
    with fake_hub({REPO: small, BIG_REPO: RepoFiles(sha=sha, files=files)}) as served:
        yield served


def hub_env(hub: FakeHub, cache: Path, home: Path, catalog: Path) -> dict[str, str]:
    env = {k: v for k, v in clean_environment().items() if not k.startswith("HF_")}
    env.update(
        {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_CACHE": str(cache),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "IMAGESYNTH_HOME": str(home),
            "IMAGESYNTH_CATALOG": str(catalog),
        }
    )
    return env


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "catalog.toml"
    path.write_text(CATALOG, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pulled(
    hub: FakeHub, catalog_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """REPO pulled into a fresh hub cache: (the cache, the snapshot folder)."""
    cache = tmp_path_factory.mktemp("hf-cache")
    env = hub_env(hub, cache, tmp_path_factory.mktemp("home"), catalog_file)
    run = imagesynth_cli("models", "pull", "tiny-wan", env=env)
    snapshot = cache / "models--imagesynth-test--tiny-wan" / "snapshots" / hub.repos[REPO].sha
    assert f"ready at {snapshot}" in run.stdout
    return cache, snapshot


def test_pull_shows_progress_resumes_after_a_kill_and_then_downloads_nothing(
    hub: FakeHub, catalog_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from imagesynth.weights.hub import cached_snapshot

    cache = tmp_path / "cache"
    env = hub_env(hub, cache, tmp_path / "home", catalog_file)
    data = hub.repos[BIG_REPO].files[PADDING]
    partial = (
        cache
        / "models--imagesynth-test--tiny-wan-big"
        / "blobs"
        / (hashlib.sha256(data).hexdigest() + ".incomplete")
    )
    hub.resume.clear()
    hub.stall[PADDING] = STALL_AT  # the first 10 MiB reach the disk, then the server waits
    first = subprocess.Popen(
        [str(BIN), "models", "pull", "tiny-wan-big"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not (partial.exists() and partial.stat().st_size > 0):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the download never wrote its first chunk"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # mid-file: no clean-up runs
        first.wait(timeout=10)
    finally:
        first.kill()
        first.communicate()
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    sent_before = sum(r.sent for r in hub.file_requests(PADDING))
    assert sent_before < len(data)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert cached_snapshot(BIG_REPO, "wan") is None  # half a pull: "auto" keeps the demo

    hub.stall.clear()
    hub.resume.set()  # let the killed run's request end
    hub.clear_log()
    second = imagesynth_cli("models", "pull", "tiny-wan-big", env=env)
    # Only the rest of the file was asked for, and only the rest was sent.
    (resumed,) = hub.file_requests(PADDING)
    assert resumed.range == f"bytes={kept}-"
    assert resumed.sent == len(data) - kept
    snapshot = Path(second.stdout.split("ready at ")[1].split(" for ")[0])
    assert cached_snapshot(BIG_REPO, "wan") == snapshot
    assert (snapshot / PADDING).read_bytes() == data
    assert (snapshot / "transformer" / "config.json").is_file()
    assert not (snapshot / "imagesynth-demo.json").exists()  # not a file the pipeline needs
    # The hub's own progress bars, on stderr.
    assert "padding.safetensors" in second.stderr and "100%" in second.stderr

    hub.clear_log()
    third = imagesynth_cli("models", "pull", "tiny-wan-big", env=env)
    assert "0 to fetch (0.0 GB)" in third.stdout
    assert [r for r in hub.requests if r.method == "GET"] == []


def test_pull_explains_gated_missing_and_unreachable_repositories(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.repos["imagesynth-test/gated"] = RepoFiles(
        sha="1" * 40, files=dict(hub.repos[REPO].files), gated=True
    )
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[models.gated]\nfamily = "wan"\nrepo = "imagesynth-test/gated"\n'
        '[models.gone]\nfamily = "wan"\nrepo = "imagesynth-test/gone"\n',
        encoding="utf-8",
    )
    env = hub_env(hub, tmp_path / "cache", tmp_path / "home", catalog)
    run = subprocess.run(
        [str(BIN), "models", "pull", "gated", "gone"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "imagesynth-test/gated is gated: accept its terms at" in run.stderr
    assert "HF_TOKEN" in run.stderr
    assert "imagesynth-test/gone was not found on" in run.stderr

    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there
    run = subprocess.run(
        [str(BIN), "models", "pull", "gone"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in run.stderr


def test_pull_refuses_to_start_without_the_disk_space(
    hub: FakeHub, catalog_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from imagesynth.weights import hub as weights_hub

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_hub, "free_disk", lambda path: 1_000_000)  # 1 MB free
    hub.clear_log()
    with pytest.raises(weights_hub.NotEnoughDisk, match=r"needs 0\.0 GB more .* 0\.0 GB free"):
        weights_hub.pull(BIG_REPO, "wan", echo=lambda line: None)
    assert [r for r in hub.requests if r.method == "GET"] == []  # nothing fetched


def test_serve_uses_pulled_weights_with_no_catalog_edit(
    pulled: tuple[Path, Path],
    catalog_file: Path,
    make_settings,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from huggingface_hub import constants

    cache, snapshot = pulled
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    caplog.set_level("INFO")
    with InProcessService(make_settings(catalog=str(catalog_file))).running() as service:
        choice = service.runtime.weights["tiny-wan"]
        assert (choice.source, choice.weights) == ("cache", str(snapshot))
        assert not service.runtime.catalog.get("tiny-wan").is_demo
        task = service.submit({"model": "tiny-wan", "input": {"prompt": "a lighthouse"}})
        done = service.wait(task)
        assert done["output"]["task_status"] == "SUCCEEDED", done
        image = service.fetch_png(done["output"]["results"][0]["url"])
        assert image.size == (256, 256)
    assert f"loaded diffusers wan engine from {snapshot}" in caplog.text


def test_without_the_weights_the_startup_log_and_models_list_name_the_pull_command(
    pulled: tuple[Path, Path], hub: FakeHub, catalog_file: Path, tmp_path: Path
) -> None:
    cache, snapshot = pulled
    env = hub_env(hub, cache, tmp_path / "home", catalog_file)
    env["IMAGESYNTH_GPU_MEMORY_GB"] = "80"
    listed = imagesynth_cli("models", "list", env=env).stdout
    (row,) = [line for line in listed.splitlines() if line.startswith("tiny-wan ")]
    assert " real " in row and row.endswith(str(snapshot))
    assert "fit: fits: needs 0.0 GB at bfloat16; 80.0 GB free" in listed
    assert "imagesynth models pull tiny-wan-big" in listed  # the other one is not here

    env["HF_HUB_CACHE"] = str(tmp_path / "empty-cache")
    listed = imagesynth_cli("models", "list", env=env).stdout
    assert "imagesynth models pull tiny-wan " in listed
    serve = subprocess.Popen(
        [str(BIN), "serve", "--no-worker", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stderr is not None
        lines = []
        for line in serve.stderr:
            lines.append(line)
            if "weights: tiny-wan-big" in line:
                break
    finally:
        serve.terminate()
        serve.wait(timeout=20)
    log = "".join(lines)
    assert (
        f"weights: tiny-wan: DEMO weights ({REPO} is not on this machine); "
        "`imagesynth models pull tiny-wan` makes them real"
    ) in log


def big_pipeline(folder: Path) -> Path:
    """A pipeline folder whose safetensors headers describe a 5B-parameter transformer
    (float32 on disk), a 4B text encoder (bfloat16) and a 0.1B VAE, without their data."""
    (folder / "model_index.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(
        json.dumps({"transformer": ["diffusers", "X"], "text_encoder": ["transformers", "Y"]})
    )
    safetensors_file(
        folder / "transformer" / "diffusion_pytorch_model.safetensors",
        {"w": ("F32", [5, 1000, 1000, 1000])},
        data=False,
    )
    safetensors_file(
        folder / "text_encoder" / "model.safetensors", {"w": ("BF16", [4, 10**9])}, data=False
    )
    safetensors_file(
        folder / "vae" / "diffusion_pytorch_model.safetensors",
        {"w": ("F16", [10**8])},
        data=False,
    )
    # A duplicate in another precision, which the pipeline never loads: not counted.
    safetensors_file(
        folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors",
        {"w": ("F16", [5 * 10**9])},
        data=False,
    )
    return folder


def test_fit_check_refuses_a_model_that_cannot_fit_a_stated_budget(tmp_path: Path) -> None:
    est = estimate(big_pipeline(tmp_path / "big"), "wan", "bfloat16")
    assert dict(est.components) == {
        "transformer": 10 * 10**9,
        "text_encoder": 8 * 10**9,
        "vae": 2 * 10**8,
    }
    assert check_fit(est, 24 * 10**9, "none").verdict == "fits"  # 18.2 GB x 1.2 = 21.8 GB
    offload = check_fit(est, 16 * 10**9, "none")
    assert offload.verdict == "offload" and offload.servable
    assert offload.describe() == (
        'fits with offload = "model" (suggested: a worker applies it): needs 21.8 GB at '
        "bfloat16 (12.0 GB for its largest part, transformer, offloaded); 16.0 GB free"
    )
    assert check_fit(est, 16 * 10**9, "model").verdict == "fits"
    refused = check_fit(est, 8 * 10**9, "none")
    assert refused.verdict == "refused" and not refused.servable
    assert refused.describe().startswith(
        "REFUSED: needs 21.8 GB at bfloat16 (12.0 GB for its largest part, transformer, "
        "offloaded); 8.0 GB free."
    )
    assert HEADROOM == 1.2


def test_worker_and_models_list_offload_or_refuse_what_the_budget_cannot_hold(
    tmp_path: Path, demo_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from imagesynth.storage.local import LocalBlobStore
    from imagesynth.storage.signing import UrlSigner
    from imagesynth.tasks.memory_queue import InMemoryTaskQueue
    from imagesynth.worker.worker import Worker

    folder = big_pipeline(tmp_path / "big")
    catalog_path = tmp_path / "catalog.toml"
    catalog_path.write_text(
        f'[models.big]\nfamily = "wan"\nweights = "{folder}"\ndevice = "cuda"\n'
        '[models.small]\nfamily = "wan"\nweights = "demo"\n',
        encoding="utf-8",
    )
    catalog, _ = resolve_catalog(Catalog.load(catalog_path))

    def worker_with(budget_gb: int) -> Worker:
        return Worker(
            InMemoryTaskQueue(),
            LocalBlobStore(tmp_path / "blobs", UrlSigner(b"k" * 32, 60)),
            catalog,
            demo_root,
            lease_seconds=30,
            poll_seconds=0.01,
            memory_budget=budget_gb * 10**9,
        )

    caplog.set_level("INFO")
    small_gpu = worker_with(8)
    assert small_gpu.check_fits() == ["big"]
    assert small_gpu.models == ["small"]  # its tasks stay PENDING for a worker that can hold it
    assert "model big: REFUSED: needs 21.8 GB at bfloat16" in caplog.text
    assert "this worker does not serve it" in caplog.text

    mid_gpu = worker_with(16)  # the whole pipeline does not fit, its transformer does
    assert mid_gpu.check_fits() == []
    assert mid_gpu.catalog.get("big").offload == "model"  # for this worker only
    assert catalog.get("big").offload == "none"
    assert 'model big: fits with offload = "model" (suggested: a worker applies it)' in caplog.text

    env = {**clean_environment(), "IMAGESYNTH_HOME": str(tmp_path / "home")}
    env["IMAGESYNTH_CATALOG"] = str(catalog_path)
    listed = imagesynth_cli("models", "list", "--memory-budget", "16", env=env).stdout
    assert 'fits with offload = "model" (suggested: a worker applies it): needs 21.8 GB' in listed
    listed = imagesynth_cli("models", "list", "--memory-budget", "8", env=env).stdout
    assert "REFUSED: needs 21.8 GB at bfloat16 (12.0 GB for its largest part" in listed


def test_doctor_on_this_machine(tmp_path: Path) -> None:
    env = {**clean_environment(), "IMAGESYNTH_HOME": str(tmp_path / "home")}
    env["HF_HUB_CACHE"] = str(tmp_path / "cache")
    run = subprocess.run([str(BIN), "doctor"], env=env, capture_output=True, text=True)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr
    import torch

    assert f"OK    torch: {torch.__version__}" in lines[0]
    if not torch.cuda.is_available():
        assert any(line.startswith("WARN  gpu: no CUDA GPU visible") for line in lines)
    assert any(line.startswith("OK    database: sqlite:///") for line in lines)
    assert any(line.startswith("OK    storage: ") for line in lines)
    at = lines.index(
        "WARN  weights qwen-image: DEMO weights: Qwen/Qwen-Image is not on this machine"
    )
    assert lines[at + 1] == "      fix: imagesynth models pull qwen-image"
    assert any(
        line.startswith(("OK    image classifier", "WARN  image classifier")) for line in lines
    )
    assert any("invisible watermark" in line for line in lines)
    assert any("prompt rewriter" in line for line in lines)
    assert "0 failed" in lines[-1]


def test_doctor_fails_when_the_database_cannot_open(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{blocker}/x.db")
    lines: list[str] = []
    assert report(settings, lines.append) == 1
    assert any(line.startswith("FAIL  runtime: ") for line in lines)
    assert lines[-1].startswith("\n") and "1 failed" in lines[-1]
