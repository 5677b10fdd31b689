"""From a catalog entry to a loaded engine: where its weights are, and one engine per spec.

The translation lives here, not in the catalog, so the catalog knows nothing of engines and
the engines nothing of the catalog.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from imagesynth.catalog import DEMO_WEIGHTS, ModelSpec
from imagesynth.engine.base import (
    Engine,
    EngineSpec,
    IPAdapterWeights,
    Levers,
    LoraWeights,
    RemoteEndpoint,
)
from imagesynth.engine.diffusers.demo import (
    IP_ADAPTER_IMAGE_ENCODER,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT_NAME,
)
from imagesynth.engine.registry import create_engine
from imagesynth.weights.fit import Fit, check_fit, estimate, load_dtype

log = logging.getLogger(__name__)

# Loading a pipeline is not thread-safe (diffusers' lazy imports; accelerate's init_empty_weights
# patches torch.nn.Module for the whole process): one load at a time in a process, however many
# workers it runs.
_LOADING = threading.Lock()


def engine_spec(spec: ModelSpec, demo_root: Path) -> EngineSpec:
    """The engine a catalog entry asks for: demo weights resolved under `demo_root`."""
    weights = str(demo_root / spec.family) if spec.is_demo else spec.weights
    ip_adapter = None
    if spec.ip_adapter == DEMO_WEIGHTS:
        ip_adapter = IPAdapterWeights(
            path=weights,
            weight_name=IP_ADAPTER_WEIGHT_NAME,
            subfolder=IP_ADAPTER_SUBFOLDER,
            image_encoder=IP_ADAPTER_IMAGE_ENCODER,
        )
    elif spec.ip_adapter is not None:
        ip_adapter = IPAdapterWeights(
            path=spec.ip_adapter,
            weight_name=spec.ip_adapter_weight_name or "",
            subfolder=spec.ip_adapter_subfolder,
            image_encoder=spec.ip_adapter_image_encoder,
        )
    loras = tuple(
        LoraWeights(name=style.name, path=style.lora, scale=style.lora_scale)
        for style in spec.style_table.values()
        if style.lora is not None
    )
    remote = None
    if spec.backend == "openai-images":
        assert spec.endpoint is not None  # the catalog checks it
        weights = spec.endpoint
        remote = RemoteEndpoint(
            endpoint=spec.endpoint,
            model=spec.remote_model or spec.name,
            api_key=os.environ.get(spec.api_key_env) if spec.api_key_env else None,
            timeout=spec.remote_timeout,
            retries=spec.remote_retries,
            seed_offsets=spec.remote_seed_offsets,
        )
    return EngineSpec(
        remote=remote,
        family=spec.family,
        backend=spec.backend,
        weights=weights,
        device=spec.device,
        dtype=spec.dtype,
        ip_adapter=ip_adapter,
        loras=loras,
        levers=Levers(
            compile=spec.compile,
            distill_lora=spec.distill_lora,
            distill_lora_scale=spec.distill_lora_scale,
            scheduler=spec.scheduler,
            offload=spec.offload,
            attention=spec.attention,
            cache=spec.cache,
            cache_threshold=spec.cache_threshold,
        ),
    )


def fit_for(spec: ModelSpec, demo_root: Path, budget: int | None = None) -> Fit:
    """Whether the weights a model runs fit its device's free memory (weights/fit.py has the
    policy). With a stated `budget` (bytes of GPU memory: IMAGESYNTH_GPU_MEMORY_GB), the
    model is held against it as it loads on a GPU, unless its device is "cpu"; no GPU is
    asked, so this also runs where there is none."""
    if spec.backend != "diffusers":
        return check_fit(None, None, spec.offload, "a remote engine: its server holds the weights")
    folder = Path(engine_spec(spec, demo_root).weights)
    if not folder.is_dir():
        return check_fit(None, None, spec.offload, "weights not on this machine yet")
    if budget is not None:
        free: int | None = budget
        on_gpu = spec.device != "cpu"
    else:
        from imagesynth.engine.diffusers.pipelines import free_memory, resolve_device

        device = resolve_device(spec.device)
        free = free_memory(device)
        if free is None:
            return check_fit(
                None, None, spec.offload, f"{device}: no GPU memory to hold it against"
            )
        on_gpu = True
    dtype = load_dtype(spec.dtype, spec.family, on_gpu=on_gpu)
    try:
        measured = estimate(folder, spec.family, dtype)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # the load will say more
        return check_fit(None, None, spec.offload, f"cannot read its weights' headers: {exc}")
    return check_fit(measured, free, spec.offload)


class Engines:
    """The worker's loaded engines: one per distinct EngineSpec, loaded on first use (models
    that share weights and settings share one engine)."""

    def __init__(self, demo_root: Path) -> None:
        self.demo_root = demo_root
        self._loaded: dict[EngineSpec, Engine] = {}

    def install(self, spec: EngineSpec, engine: Engine) -> None:
        """Use this (loaded) engine for `spec` instead of building one."""
        self._loaded[spec] = engine

    def loaded_count(self) -> int:
        """How many engines are loaded (imagesynth_pipelines_loaded)."""
        return len(self._loaded)

    def for_model(self, spec: ModelSpec) -> Engine:
        wanted = engine_spec(spec, self.demo_root)
        engine = self._loaded.get(wanted)
        if engine is None:
            started = time.monotonic()
            with _LOADING:
                engine = create_engine(wanted)
                engine.load()
            self._loaded[wanted] = engine
            log.info(
                "loaded %s %s engine from %s in %.1fs",
                wanted.backend,
                wanted.family,
                wanted.weights,
                time.monotonic() - started,
            )
        return engine
