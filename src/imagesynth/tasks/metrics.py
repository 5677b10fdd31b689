"""The service's Prometheus metrics: one registry per process, shared by what runs in it.

`serve` (the API and its in-process worker) exposes everything at GET /metrics; an
`imagesynth worker --metrics-port N` serves its own registry on that port. What the database
holds (tasks by status, the queue per model, live workers) is read at scrape time through
tasks.ports.ServiceState, so any API replica reports the same numbers; what only a worker
knows (durations, finished tasks, loaded pipelines) is counted where it happens. Nothing here
imports torch: the worker adds its CUDA collector itself (worker/telemetry.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from imagesynth.tasks.ports import ServiceState

log = logging.getLogger(__name__)

# Seconds: from a fraction of a second (demo pipelines, a warm GPU) to the minutes a large
# model on a busy queue can take.
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """The process's registry and the instruments the API and the worker update."""

    def __init__(self) -> None:
        # Not prometheus_client's global registry: each service (and each test) its own.
        self.registry = CollectorRegistry()
        r = self.registry
        self.refusals = Counter(
            "imagesynth_refusals", "Requests answered with an error, by code.", ["code"], registry=r
        )
        self.finished = Counter(
            "imagesynth_tasks_finished",
            "Tasks this process's workers finished, by model and final status.",
            ["model", "status"],
            registry=r,
        )
        self.queue_wait = self._histogram("queue_wait", "From submission to the first claim.")
        self.generation = self._histogram("generation", "The engine call that made the images.")
        self.postprocess = self._histogram(
            "postprocess", "Safety check, labels, encoding and storage of a task's images."
        )
        self.end_to_end = self._histogram("end_to_end", "From submission to success.")
        self._pipelines: list[Callable[[], int]] = []
        Gauge(
            "imagesynth_pipelines_loaded",
            "Pipelines loaded by this process's workers.",
            registry=r,
        ).set_function(lambda: sum(count() for count in self._pipelines))
        self._watching = False

    def _histogram(self, name: str, what: str) -> Histogram:
        return Histogram(
            f"imagesynth_{name}_seconds",
            f"{what} Succeeded tasks, by model.",
            ["model"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def refused(self, code: str) -> None:
        self.refusals.labels(code=code).inc()

    def count_pipelines(self, count: Callable[[], int]) -> None:
        """Add a worker's loaded-pipeline count to imagesynth_pipelines_loaded."""
        self._pipelines.append(count)

    def watch(self, state: ServiceState, window_seconds: float) -> None:
        """Report what the database holds, read at each scrape (once per registry)."""
        if not self._watching:
            self.registry.register(StateCollector(state, window_seconds))
            self._watching = True

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)


class StateCollector(Collector):
    """Tasks by model and status, the queue per model and the live workers, from the
    database at scrape time. An unreachable database makes imagesynth_database_up 0 rather
    than failing the scrape, so the other metrics still arrive."""

    def __init__(self, state: ServiceState, window_seconds: float) -> None:
        self.state = state
        self.window_seconds = window_seconds

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # read at collect time only: registering must not touch the database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("imagesynth_database_up", "Whether the database answered.")
        try:
            counts = self.state.task_counts()
            depths = self.state.queue_depths()
            workers = self.state.worker_count(self.window_seconds)
        except Exception:
            log.exception("metrics: the database did not answer")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        tasks = GaugeMetricFamily(
            "imagesynth_tasks",
            "Tasks in the database, by model and status.",
            labels=["model", "status"],
        )
        for (model, status), n in sorted(counts.items()):
            tasks.add_metric([model, status], n)
        yield tasks
        depth = GaugeMetricFamily(
            "imagesynth_queue_depth", "Tasks waiting (PENDING), by model.", labels=["model"]
        )
        oldest = GaugeMetricFamily(
            "imagesynth_queue_oldest_wait_seconds",
            "How long the oldest waiting task has waited, by model.",
            labels=["model"],
        )
        for model, (n, waited) in sorted(depths.items()):
            depth.add_metric([model], n)
            oldest.add_metric([model], waited)
        yield depth
        yield oldest
        live = GaugeMetricFamily(
            "imagesynth_workers_live",
            "Workers that heartbeated within the readiness window (any process).",
        )
        live.add_metric([], workers)
        yield live
