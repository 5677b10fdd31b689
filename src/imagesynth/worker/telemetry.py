"""CUDA memory for /metrics, where the worker's engines run on a GPU.

Only worker processes register this (the API never imports torch); it reads torch only if the
engines already imported it, so a scrape never loads it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class CudaMemory(Collector):
    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return
        allocated = GaugeMetricFamily(
            "imagesynth_cuda_memory_allocated_bytes",
            "CUDA memory held by tensors, by device.",
            labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "imagesynth_cuda_memory_reserved_bytes",
            "CUDA memory held by the caching allocator, by device.",
            labels=["device"],
        )
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            allocated.add_metric([device], torch.cuda.memory_allocated(index))
            reserved.add_metric([device], torch.cuda.memory_reserved(index))
        yield allocated
        yield reserved
