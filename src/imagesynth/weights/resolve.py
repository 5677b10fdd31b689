"""`weights = "auto"`: which weights each catalog entry runs on this machine.

Decided once per process, when it starts (runtime.py), the same way in an API process and a
worker: the entry's `repo` when its files are complete in the Hugging Face cache or in a
weights folder (IMAGESYNTH_WEIGHTS_DIR/org/name), else the demo weights. The API needs the
answer too (a demo model's default steps are its `demo_steps`), and the look-up reads a few
files, no network and no torch. Weights pulled while a process runs are used from its next
start on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imagesynth.catalog import AUTO_WEIGHTS, DEMO_WEIGHTS, Catalog, ModelSpec
from imagesynth.domain import Family
from imagesynth.weights.hub import cached_snapshot, folder_snapshot, pull_command

# cache / folder: "auto" found its repo there; missing: "auto" did not (demo weights);
# demo: weights = "demo"; path / hub: an explicit folder or hub id in the catalog; remote: a
# remote engine's server (backend = "openai-images"), which has weights of its own.
Source = Literal["cache", "folder", "missing", "demo", "path", "hub", "remote"]


@dataclass(frozen=True)
class WeightsChoice:
    """What one model runs, and why."""

    model: str
    repo: str | None
    source: Source
    weights: str  # what the engine gets: a folder, a hub id, or "demo"

    @property
    def real(self) -> bool:
        return self.source not in ("missing", "demo")

    @property
    def pull(self) -> str | None:
        """The command that would make the model real, when there is one."""
        return pull_command(self.model) if self.source == "missing" and self.repo else None

    def describe(self) -> str:
        """One line for the startup log and `imagesynth models list`."""
        if self.source == "cache":
            return f"{self.model}: real weights {self.repo} from the hub cache ({self.weights})"
        if self.source == "folder":
            return f"{self.model}: real weights {self.repo} from {self.weights}"
        if self.source == "path":
            return f"{self.model}: real weights from {self.weights}"
        if self.source == "hub":
            return f"{self.model}: real weights {self.weights} (a hub id: fetched on first load)"
        if self.source == "remote":
            return f"{self.model}: a remote engine at {self.weights} (its own weights)"
        if self.source == "demo":
            return f'{self.model}: DEMO weights (weights = "demo" in the catalog)'
        if self.repo is None:
            return f"{self.model}: DEMO weights (no repo key in the catalog)"
        return (
            f"{self.model}: DEMO weights ({self.repo} is not on this machine); "
            f"`{self.pull}` makes them real"
        )


def choose(
    spec: ModelSpec,
    folders: Sequence[Path] = (),
    _found: dict[tuple[str, Family], tuple[Source, Path] | None] | None = None,
) -> WeightsChoice:
    """The weights an entry runs here (see the module's docstring)."""
    if spec.backend != "diffusers":
        return WeightsChoice(spec.name, spec.repo, "remote", spec.endpoint or "")
    if spec.weights == DEMO_WEIGHTS:
        return WeightsChoice(spec.name, spec.repo, "demo", DEMO_WEIGHTS)
    if spec.weights != AUTO_WEIGHTS:
        local = Path(spec.weights).expanduser()
        source: Source = "path" if local.is_dir() else "hub"
        return WeightsChoice(spec.name, spec.repo, source, spec.weights)
    if spec.repo is None:
        return WeightsChoice(spec.name, None, "missing", DEMO_WEIGHTS)
    key = (spec.repo, spec.family)
    if _found is None:
        _found = {}
    if key not in _found:  # models that share a repository look it up once
        _found[key] = _look_up(key, folders)
    found = _found[key]
    if found is None:
        return WeightsChoice(spec.name, spec.repo, "missing", DEMO_WEIGHTS)
    return WeightsChoice(spec.name, spec.repo, found[0], str(found[1]))


def _look_up(key: tuple[str, Family], folders: Sequence[Path]) -> tuple[Source, Path] | None:
    repo, family = key
    for root in folders:
        folder = folder_snapshot(root, repo, family)
        if folder is not None:
            return "folder", folder
    snapshot = cached_snapshot(repo, family)
    return None if snapshot is None else ("cache", snapshot)


def resolve_catalog(
    catalog: Catalog, folders: Sequence[Path] = ()
) -> tuple[Catalog, dict[str, WeightsChoice]]:
    """The catalog with every "auto" entry turned into the weights it runs here ("demo" or a
    folder), and each model's choice. A model resolved to real weights drops a demo
    IP-Adapter (it fits only the demo UNet): its refonly falls back to image-to-image."""
    found: dict[tuple[str, Family], tuple[Source, Path] | None] = {}
    choices: dict[str, WeightsChoice] = {}
    models: dict[str, ModelSpec] = {}
    for name, spec in catalog.models.items():
        choice = choose(spec, folders, found)
        choices[name] = choice
        if spec.weights == AUTO_WEIGHTS and choice.source != "remote":
            spec = dataclasses.replace(
                spec,
                weights=choice.weights,
                ip_adapter=(
                    None if choice.real and spec.ip_adapter == DEMO_WEIGHTS else spec.ip_adapter
                ),
            )
        models[name] = spec
    return Catalog(models, catalog.source, catalog.styles, catalog.billing), choices
