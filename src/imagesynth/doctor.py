"""`imagesynth doctor`: what this machine can serve, one line per check, each OK or the fix.

FAIL marks what the service cannot run without (torch, the catalog, the database, the blob
store): the command then exits 1. WARN marks what works but not as well as it could (no GPU,
demo weights, a missing watermark, classifier or rewriter)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from imagesynth.config import Settings
from imagesynth.runtime import Runtime

Level = Literal["OK", "WARN", "FAIL"]
CUDA_SETUP = (
    "IMAGESYNTH_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 scripts/setup.sh "
    "(after removing .venv, or in a fresh checkout)"
)


@dataclass(frozen=True)
class Check:
    level: Level
    what: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level:<5} {self.what}: {self.detail}"
        return f"{text}\n      fix: {self.fix}" if self.fix else text


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; the runtime's are skipped (FAIL) when it cannot open."""
    checks = list(_torch_checks())
    try:
        rt = Runtime.open(settings)
    except Exception as exc:  # any reason the service cannot start: report it, do not crash
        checks.append(
            Check("FAIL", "runtime", f"{type(exc).__name__}: {exc}", "fix the setting it names")
        )
        return checks
    checks.append(Check("OK", "catalog", f"{rt.catalog.source}, {len(rt.catalog.models)} models"))
    checks.extend(_weights_checks(rt))
    checks.append(
        _probe("database", _redact(settings.resolved_database_url), rt.stores.workers.ping)
    )
    checks.append(_probe("storage", _storage_name(settings), lambda: rt.blobs.read("doctor/probe")))
    checks.extend(_extras(rt))
    return checks


def _torch_checks() -> Iterator[Check]:
    try:
        import torch
    except ImportError as exc:
        yield Check("FAIL", "torch", f"not importable ({exc})", "scripts/setup.sh")
        return
    cuda = torch.version.cuda
    build = f"CUDA {cuda} build" if cuda else "CPU build"
    yield Check("OK", "torch", f"{torch.__version__} ({build})")
    from importlib.metadata import PackageNotFoundError, version

    try:  # its version, without the seconds an import of diffusers takes
        yield Check("OK", "diffusers", version("diffusers"))
    except PackageNotFoundError:
        yield Check("FAIL", "diffusers", "not installed", "scripts/setup.sh")
    if not torch.cuda.is_available():
        fix = CUDA_SETUP if not cuda else "check nvidia-smi and CUDA_VISIBLE_DEVICES"
        yield Check("WARN", "gpu", "no CUDA GPU visible: models run on the CPU (slowly)", fix)
        return
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        name = torch.cuda.get_device_name(i)
        yield Check(
            "OK", f"gpu cuda:{i}", f"{name}, {total / 1e9:.1f} GB, {free / 1e9:.1f} GB free"
        )


def _weights_checks(rt: Runtime) -> Iterator[Check]:
    from huggingface_hub import constants

    from imagesynth.weights.hub import cache_dir, free_disk, gb
    from imagesynth.worker.engines import fit_for

    token = "set" if _has_token() else "not set (needed for gated repositories only)"
    folder = cache_dir()
    yield Check(
        "OK",
        "hub",
        f"{constants.ENDPOINT}, cache {folder} ({gb(free_disk(folder))} free), token {token}",
    )
    demo_root = rt.settings.resolved_demo_weights_dir
    for name, choice in rt.weights.items():
        spec = rt.catalog.get(name)
        fit = fit_for(spec, demo_root, rt.settings.memory_budget).describe()
        if choice.real:
            level: Level = "OK" if "REFUSED" not in fit else "WARN"
            yield Check(level, f"weights {name}", f"{choice.describe()}; {fit}")
        elif choice.pull is not None:
            detail = f"DEMO weights: {choice.repo} is not on this machine"
            yield Check("WARN", f"weights {name}", detail, choice.pull)
        else:
            yield Check("WARN", f"weights {name}", choice.describe(), "set repo in its entry")


def _has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def _probe(what: str, name: str, call: Callable[[], object]) -> Check:
    try:
        call()
    except Exception as exc:  # the failure is the finding
        return Check("FAIL", what, f"{name}: {type(exc).__name__}: {exc}", "check its setting")
    return Check("OK", what, f"{name} reachable")


def _redact(url: str) -> str:
    """A database URL without its password."""
    head, sep, tail = url.rpartition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.split(":")[0]
    return f"{scheme}://{user}:***@{tail}"


def _storage_name(settings: Settings) -> str:
    return settings.storage_url or str(settings.blobs_dir)


def _extras(rt: Runtime) -> Iterator[Check]:
    from imagesynth.labels import invisible
    from imagesynth.safety.images import NoImageClassifier, build_image_classifier

    if invisible.available():
        yield Check("OK", "invisible watermark", "available")
    else:
        yield Check(
            "WARN",
            "invisible watermark",
            "its packages are not installed: images carry the metadata label only",
            "scripts/setup.sh installs them",
        )
    classifier = build_image_classifier(rt.settings)
    if isinstance(classifier, NoImageClassifier):
        yield Check(
            "WARN",
            "image classifier",
            classifier.describe(),
            "IMAGESYNTH_IMAGE_SAFETY=auto (opennsfw ships with imagesynth)",
        )
    else:
        try:
            classifier.load()
            yield Check("OK", "image classifier", classifier.describe())
        except Exception as exc:  # the failure is the finding
            yield Check(
                "FAIL", "image classifier", f"{type(exc).__name__}: {exc}", "scripts/setup.sh"
            )
    if rt.rewriter_kind == "none":
        yield Check(
            "WARN",
            "prompt rewriter",
            "none: prompt_extend leaves prompts as they are",
            "set IMAGESYNTH_REWRITER_BASE_URL (an OpenAI-compatible endpoint) or "
            "IMAGESYNTH_REWRITER_PATH (a local LM folder)",
        )
    else:
        yield Check("OK", "prompt rewriter", rt.rewriter.describe())


def report(settings: Settings, echo: Callable[[str], None] = print) -> int:
    """Print every check; the exit status: 1 when an essential one failed."""
    checks = run_checks(settings)
    for check in checks:
        echo(check.line())
    failed = [c for c in checks if c.level == "FAIL"]
    warned = [c for c in checks if c.level == "WARN"]
    echo(f"\n{len(checks)} checks: {len(failed)} failed, {len(warned)} to improve")
    return 1 if failed else 0
