"""Fit checks: whether a model's weights fit the GPU memory there is, before a worker loads
them (rather than an out-of-memory error in the first task).

The estimate is the weights' bytes at the dtype they load in: parameter counts read from the
safetensors headers of every component the pipeline loads (denoiser, text encoder, VAE),
scaled from the stored dtype. Each need gets HEADROOM on top for activations, the CUDA context
and the allocator's slack. The policy:

- fits: the whole pipeline (x HEADROOM) fits in the free memory.
- offload: it does not, but its largest component does: it fits with `offload = "model"`
  (diffusers keeps each component on the GPU only while it runs), which is suggested, and
  which a worker applies for the model when it starts (worker/worker.py check_fits).
- refused: not even its largest component fits (`offload = "sequential"` is the last resort):
  a worker does not serve it.
- unchecked: no figure to hold it against (the CPU, or weights not on this machine yet).

A model configured with `offload = "model"` is held against its largest component; one with
`offload = "sequential"` is not checked (it needs about one layer at a time).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imagesynth.domain import Family
from imagesynth.weights.hub import FAMILY_COMPONENTS, IGNORE_PATTERNS, gb, wanted

HEADROOM = 1.2
# The dtype a family loads in on a GPU when the catalog says "auto" (engine/diffusers/*.py).
GPU_AUTO_DTYPE: dict[Family, str] = {
    "qwen-image": "bfloat16",
    "wan": "bfloat16",
    "stable-diffusion": "float16",
    "z-image": "bfloat16",
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# safetensors dtypes: bytes per element; the float ones load as the chosen dtype.
_STORED_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1,
}  # fmt: skip
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit

Verdict = Literal["fits", "offload", "refused", "unchecked"]


def load_dtype(dtype: str, family: Family, on_gpu: bool) -> str:
    """The dtype the engine loads in (engine/diffusers/pipelines.py resolve_dtype)."""
    if dtype != "auto":
        return dtype
    return GPU_AUTO_DTYPE[family] if on_gpu else "float32"


def safetensors_bytes(path: Path, itemsize: int) -> int:
    """Bytes a safetensors file takes once loaded with float tensors at `itemsize` bytes each:
    from its header alone (8 bytes of length, then JSON), not its data."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _MAX_HEADER:
            raise ValueError(f"{path}: not a safetensors file")
        header = json.loads(f.read(length))
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in tensor["shape"]:
            count *= int(dim)
        stored = tensor["dtype"]
        total += count * (itemsize if stored in _FLOATS else _STORED_BYTES.get(stored, 4))
    return total


@dataclass(frozen=True)
class Estimate:
    """A pipeline's weights in memory, per component, at `dtype`."""

    dtype: str
    components: tuple[tuple[str, int], ...]  # (component folder, bytes)

    @property
    def total(self) -> int:
        return sum(size for _, size in self.components)

    @property
    def largest(self) -> tuple[str, int]:
        return max(self.components, key=lambda c: c[1], default=("none", 0))


def estimate(folder: Path, family: Family, dtype: str) -> Estimate:
    """The estimate for a pipeline folder (a snapshot, a weights folder, the demo weights)."""
    itemsize = DTYPE_BYTES[dtype]
    components = []
    for component in FAMILY_COMPONENTS[family]:
        sub = folder / component
        if not sub.is_dir():
            continue
        files = [
            p
            for p in sorted(sub.glob("*.safetensors"))
            if wanted(f"{component}/{p.name}", family)
            and not any(p.match(pattern) for pattern in IGNORE_PATTERNS)
        ]
        size = sum(safetensors_bytes(p, itemsize) for p in files)
        if size:
            components.append((component, size))
    return Estimate(dtype=dtype, components=tuple(components))


@dataclass(frozen=True)
class Fit:
    """A model's estimate held against the memory there is."""

    verdict: Verdict
    estimate: Estimate | None
    free: int | None  # bytes free (or the stated budget)
    offload: str  # the catalog's offload setting
    why: str = ""  # for "unchecked": why not

    @property
    def servable(self) -> bool:
        """Whether a worker serves the model ("offload": with offload = "model" applied)."""
        return self.verdict != "refused"

    @property
    def needed(self) -> int:
        return 0 if self.estimate is None else int(self.estimate.total * HEADROOM)

    @property
    def needed_offloaded(self) -> int:
        return 0 if self.estimate is None else int(self.estimate.largest[1] * HEADROOM)

    def describe(self) -> str:
        """The verdict with its figures, e.g. for the startup log and `models list`."""
        if self.verdict == "unchecked" or self.estimate is None or self.free is None:
            return f"not checked ({self.why})" if self.why else "not checked"
        est = self.estimate
        largest, _ = est.largest
        whole = f"needs {gb(self.needed)} at {est.dtype}"
        parts = f"{whole} ({gb(self.needed_offloaded)} for its largest part, {largest}, offloaded)"
        free = f"{gb(self.free)} free"
        if self.verdict == "fits":
            if self.offload == "model":
                return f'fits with offload = "model": {gb(self.needed_offloaded)}; {free}'
            if self.offload == "sequential":
                return f'fits with offload = "sequential" (not measured); {free}'
            return f"fits: {whole}; {free}"
        if self.verdict == "offload":
            return f'fits with offload = "model" (suggested: a worker applies it): {parts}; {free}'
        return (
            f'REFUSED: {parts}; {free}. Use a GPU with more memory, or offload = "sequential" '
            "(far slower)"
        )


def check_fit(est: Estimate | None, free: int | None, offload: str, why: str = "") -> Fit:
    """The verdict for an estimate and the free bytes (see the module's docstring)."""
    if est is None or free is None:
        return Fit("unchecked", est, free, offload, why)
    fit = Fit("fits", est, free, offload)
    if offload == "sequential":
        return fit
    if offload == "model":
        return fit if fit.needed_offloaded <= free else Fit("refused", est, free, offload)
    if fit.needed <= free:
        return fit
    if fit.needed_offloaded <= free:
        return Fit("offload", est, free, offload)
    return Fit("refused", est, free, offload)
