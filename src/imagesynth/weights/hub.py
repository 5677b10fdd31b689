"""The Hugging Face hub side of real weights: the files a family's pipeline needs, whether a
repository is complete in the local cache, and `imagesynth models pull`.

Everything goes through huggingface_hub, which reads HF_ENDPOINT, HF_TOKEN, HF_HOME and
HF_HUB_CACHE itself: nothing here passes an endpoint, a token or a cache folder, so the hub's
own settings always win. Nothing downloads unless `pull` is called.

Resuming: huggingface_hub 2.x writes each download to a file unique to its process and starts
over when run again, so `pull` fetches the weight files (the LFS files: nearly all the bytes)
itself first, with the hub's `http_get` and a Range request from where a killed run stopped,
into the hub's own blob layout, under the hub's own lock. `snapshot_download` then finds the
blobs there and only links them (and fetches the small files).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from imagesynth.domain import Family
from imagesynth.errors import ImageSynthError

# The component folders each family's diffusers pipeline loads (model_index.json names them).
# Stable Diffusion's safety_checker and feature_extractor are left out: the engine loads
# neither (engine/diffusers/stable_diffusion.py).
FAMILY_COMPONENTS: dict[Family, tuple[str, ...]] = {
    "qwen-image": ("transformer", "text_encoder", "tokenizer", "vae", "scheduler"),
    "wan": ("transformer", "transformer_2", "text_encoder", "tokenizer", "vae", "scheduler"),
    "stable-diffusion": ("unet", "text_encoder", "tokenizer", "vae", "scheduler"),
    "z-image": ("transformer", "text_encoder", "tokenizer", "vae", "scheduler"),
}
# What a component folder may hold that a pipeline reads: configs, safetensors weights and
# their index, tokenizer vocabularies (merges.txt, spiece.model, tokenizer.json, ...).
_COMPONENT_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja")
# Duplicates of the same weights in other formats or precisions: never needed (diffusers reads
# the plain `*.safetensors` when no variant is asked for).
IGNORE_PATTERNS = [
    "*.fp16.safetensors",
    "*.bf16.safetensors",
    "*non_ema*",
    "*.bin",
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.onnx",
    "*.onnx_data",
    "*.msgpack",
    "*.h5",
    "*.gguf",
]


def allow_patterns(family: Family) -> list[str]:
    """The files of a repository that the family's pipeline needs (snapshot_download's
    allow_patterns; IGNORE_PATTERNS removes the duplicates among them)."""
    return ["model_index.json"] + [
        f"{component}/{pattern}"
        for component in FAMILY_COMPONENTS[family]
        for pattern in _COMPONENT_FILES
    ]


def wanted(path: str, family: Family) -> bool:
    """Whether `pull` fetches this file of a repository (the patterns above)."""
    return any(fnmatch.fnmatch(path, p) for p in allow_patterns(family)) and not any(
        fnmatch.fnmatch(path, p) for p in IGNORE_PATTERNS
    )


def pull_command(model: str) -> str:
    """The command that makes a model's weights real."""
    return f"imagesynth models pull {model}"


# -- errors -------------------------------------------------------------------------------


class PullError(ImageSynthError):
    """The weights could not be downloaded."""


class RepoGated(PullError):
    """The repository is gated: accept its terms on the hub and set HF_TOKEN."""


class RepoMissing(PullError):
    """The repository does not exist (or is private and no HF_TOKEN can see it)."""


class HubUnreachable(PullError):
    """The hub could not be reached."""


class NotEnoughDisk(PullError):
    """Not enough free disk space for the weights."""


# -- the local cache ----------------------------------------------------------------------


def cache_dir() -> Path:
    """The hub cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def cached_snapshot(repo: str, family: Family, revision: str = "main") -> Path | None:
    """The repository's snapshot folder when every file the family needs is in the hub cache,
    else None. No network: huggingface_hub's own offline look-up (which knows, from the file
    listing it kept, whether an interrupted download left files out), then a check that the
    folder holds a pipeline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo,
            revision=revision,
            allow_patterns=allow_patterns(family),
            ignore_patterns=IGNORE_PATTERNS,
            local_files_only=True,
        )
    except LocalEntryNotFoundError:  # not there, or incomplete (IncompleteSnapshotError)
        return None
    folder = Path(path)
    return folder if is_complete_pipeline(folder, family) else None


def folder_snapshot(root: Path, repo: str, family: Family) -> Path | None:
    """A folder the operator put the repository in: ROOT/org/name or ROOT/name."""
    for candidate in (root / repo, root / repo.split("/")[-1]):
        if is_complete_pipeline(candidate, family):
            return candidate.resolve()
    return None


def is_complete_pipeline(folder: Path, family: Family) -> bool:
    """Whether a folder holds the family's pipeline: its model_index.json, a non-empty folder
    for each component it names, and every shard each safetensors index lists."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    for component in FAMILY_COMPONENTS[family]:
        entry = index.get(component)
        if not isinstance(entry, list) or entry[0] is None:
            continue  # not part of this repository's pipeline (e.g. Wan 2.1's transformer_2)
        sub = folder / component
        if not sub.is_dir() or not any(sub.iterdir()):
            return False
        for shard_index in sub.glob("*.safetensors.index.json"):
            try:
                shards = set(
                    json.loads(shard_index.read_text(encoding="utf-8"))["weight_map"].values()
                )
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            if not all((sub / shard).is_file() for shard in shards):
                return False
    return True


# -- pull ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    lfs: bool  # a weights file kept in LFS: fetched resumably


@dataclass(frozen=True)
class PullPlan:
    """What a pull of one repository fetches: the wanted files, their sizes, what is missing."""

    repo: str
    commit: str
    files: tuple[RemoteFile, ...]
    missing: tuple[RemoteFile, ...]  # not in the cache yet
    missing_bytes: int  # still to download (minus what interrupted runs left)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def gb(size: float) -> str:
    """Bytes as GB with one decimal (1 GB = 10^9 bytes, as disks and the hub count)."""
    return f"{size / 1e9:.1f} GB"


T = TypeVar("T")


def _hub_call(repo: str, call: Callable[[], T]) -> T:
    """Run a hub call, turning its failures into one clear PullError each."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return call()
    except GatedRepoError:
        raise RepoGated(
            f"{repo} is gated: accept its terms at {constants.ENDPOINT}/{repo} with your account, "
            "then set HF_TOKEN (or run `hf auth login`) and pull again"
        ) from None
    except RepositoryNotFoundError:
        raise RepoMissing(
            f"{repo} was not found on {constants.ENDPOINT}: check the catalog's repo key "
            "(a private repository also needs HF_TOKEN)"
        ) from None
    except RevisionNotFoundError as exc:
        raise RepoMissing(f"{repo}: {exc}") from None
    except OfflineModeIsEnabled:
        raise HubUnreachable(
            "HF_HUB_OFFLINE is set: unset it to download (or copy the weights into the cache)"
        ) from None
    except HfHubHTTPError as exc:
        raise PullError(f"{repo}: the hub answered {exc}") from None
    except httpx2.TransportError as exc:
        raise HubUnreachable(
            f"cannot reach {constants.ENDPOINT} ({type(exc).__name__}: {exc}); check the network "
            "or HF_ENDPOINT (a mirror)"
        ) from None
    except OSError as exc:  # the disk, or a download that ended short of its size
        raise PullError(f"{repo}: {type(exc).__name__}: {exc}") from None


def plan_pull(repo: str, family: Family, revision: str | None = None) -> PullPlan:
    """The files to fetch and their sizes, from the hub's file metadata, against the cache."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    info = _hub_call(repo, lambda: HfApi().model_info(repo, revision=revision, files_metadata=True))
    commit = info.sha or revision or "main"
    files = tuple(
        RemoteFile(
            path=s.rfilename,
            size=int(s.lfs.size if s.lfs is not None else (s.size or 0)),
            lfs=s.lfs is not None,
        )
        for s in info.siblings or ()
        if wanted(s.rfilename, family)
    )
    if not any(f.path == "model_index.json" for f in files):
        raise PullError(f"{repo} has no model_index.json: it is not a diffusers pipeline")
    missing = tuple(
        f
        for f in files
        if not isinstance(try_to_load_from_cache(repo, f.path, revision=commit), str)
    )
    partial = _partial_bytes(repo)
    return PullPlan(
        repo=repo,
        commit=commit,
        files=files,
        missing=missing,
        missing_bytes=max(sum(f.size for f in missing) - partial, 0),
    )


def free_disk(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or would, once created)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk(plan: PullPlan, folder: Path) -> None:
    """Refuse a pull that cannot fit on the cache's disk, before the first byte."""
    free = free_disk(folder)
    if plan.missing_bytes > free:
        raise NotEnoughDisk(
            f"{plan.repo} needs {gb(plan.missing_bytes)} more on {folder}, which has "
            f"{gb(free)} free: free some space or point HF_HUB_CACHE (or HF_HOME) at a larger disk"
        )


def pull(
    repo: str,
    family: Family,
    *,
    revision: str | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Download the files the family needs from `repo` into the hub cache; the snapshot folder.

    Shows the hub's progress bars; resumes the weight files an interrupted run left; checks
    the disk first; a second pull downloads nothing."""
    from huggingface_hub import snapshot_download

    plan = plan_pull(repo, family, revision)
    folder = cache_dir()
    echo(
        f"{repo} @ {plan.commit[:12]}: {len(plan.files)} files, {gb(plan.total_bytes)}; "
        f"{len(plan.missing)} to fetch ({gb(plan.missing_bytes)}) into {folder}"
    )
    check_disk(plan, folder)
    for remote in plan.missing:
        if remote.lfs:
            _hub_call(repo, functools.partial(_fetch_resumable, repo, remote, plan.commit))
    path = _hub_call(
        repo,
        lambda: snapshot_download(
            repo,
            revision=revision,
            allow_patterns=allow_patterns(family),
            ignore_patterns=IGNORE_PATTERNS,
        ),
    )
    return Path(path)


def _storage_folder(repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=repo, repo_type="model")


def _partial_bytes(repo: str) -> int:
    """Bytes that interrupted downloads of this repository left in the cache."""
    blobs = _storage_folder(repo) / "blobs"
    return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0


def _fetch_resumable(repo: str, remote: RemoteFile, commit: str) -> None:
    """Download one file into the cache's blobs, continuing a partial file with a Range
    request: the layout and lock the hub's own downloads use, so snapshot_download links it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    meta = get_hf_file_metadata(hf_hub_url(repo, remote.path, revision=commit))
    if meta.etag is None or meta.location is None:
        raise PullError(f"{repo}/{remote.path}: the hub gave no ETag or location")
    blobs = _storage_folder(repo) / "blobs"
    blob = blobs / meta.etag
    if blob.exists():
        return
    blobs.mkdir(parents=True, exist_ok=True)
    lock = cache_dir() / ".locks" / repo_folder_name(repo_id=repo, repo_type="model")
    lock.mkdir(parents=True, exist_ok=True)
    partial = blobs / f"{meta.etag}.incomplete"
    with WeakFileLock(str(lock / f"{meta.etag}.lock")):
        if blob.exists():
            return
        _adopt_leftovers(partial, blobs.glob(f"{meta.etag}.*.incomplete"))
        partial.touch()
        # Not append mode: if the server ignores the Range, http_get seeks back to rewrite.
        with partial.open("r+b") as f:
            start = f.seek(0, os.SEEK_END)
            if meta.size is not None and start > meta.size:  # not this file's beginning
                f.truncate(0)
                start = 0
            http_get(
                meta.location,
                f,
                resume_size=start,
                headers=build_hf_headers(),
                expected_size=meta.size,
                displayed_filename=remote.path,
            )
        os.replace(partial, blob)


def _adopt_leftovers(partial: Path, leftovers: Iterable[Path]) -> None:
    """Keep the longest partial download of a blob (the hub's own `<etag>.<id>.incomplete`
    from a killed run, or ours) as `partial`; drop the others."""
    candidates = [p for p in leftovers if p != partial]
    if partial.exists():
        candidates.append(partial)
    if not candidates:
        return
    best = max(candidates, key=lambda p: p.stat().st_size)
    for p in candidates:
        if p != best:
            p.unlink(missing_ok=True)
    if best != partial:
        os.replace(best, partial)
