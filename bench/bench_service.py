"""Benchmark: submit latency under concurrency, and the service's overhead over the bare pipeline.

    .venv/bin/python bench/bench_service.py [--model wan2.2-t2i-flash] [--size 512*512] [--tasks 20]

Prints:
1. submit latency p50/p99 with 20 concurrent clients (API only, `serve --no-worker`, so the
   figure is the HTTP + validation + durable-insert path, not queueing behind generation);
2. the end-to-end time of 20 tasks through the service (submit, queue, generate, PNG, store,
   poll until SUCCEEDED, download) divided by the time of the same 20 generations called
   directly on the loaded pipeline in this process: the service's overhead ratio, for both
   topologies: `serve` with its in-process worker, and `serve --no-worker` beside a separate
   `imagesynth worker` process.
Everything runs on this machine's loopback; the figures are from one run.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent / "imagesynth"
SUBMIT = "/api/v1/services/aigc/text2image/image-synthesis"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


UNLIMITED = ("--rps", "10000", "--in-flight", "100", "--max-pending", "1000000")


class Service:
    def __init__(self, home: Path, demo: Path, worker: str) -> None:
        """worker: "none" (API only), "in-process" (serve's own) or "process" (a separate
        `imagesynth worker` on the same home)."""
        self.env = {
            **os.environ,
            "IMAGESYNTH_HOME": str(home),
            "IMAGESYNTH_DEMO_WEIGHTS_DIR": str(demo),
            "IMAGESYNTH_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "IMAGESYNTH_WORKER_POLL_SECONDS": "0.02",
            "HF_HUB_OFFLINE": "1",
        }
        self.key = subprocess.run(
            # Limits out of the way: this measures the service, not its rate limits.
            [str(BIN), "keys", "create", *UNLIMITED],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.port = free_port()
        args = [str(BIN), "serve", "--port", str(self.port)]
        if worker != "in-process":
            args.append("--no-worker")
        with (home / "serve.log").open("w") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.worker = None
        if worker == "process":
            with (home / "worker.log").open("w") as log:
                self.worker = subprocess.Popen(
                    [str(BIN), "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
                )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120
        )

    def close(self) -> None:
        for proc in (self.proc, self.worker):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)


def body(model: str, size: str, seed: int) -> dict:
    return {
        "model": model,
        "input": {"prompt": "a benchmark"},
        "parameters": {"n": 1, "size": size, "seed": seed},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_submit_latency(svc: Service, model: str, size: str, clients: int, per: int) -> None:
    def one_client(c: int) -> list[float]:
        out = []
        with svc.client() as http:
            for i in range(per):
                started = time.perf_counter()
                r = http.post(
                    SUBMIT,
                    json=body(model, size, c * per + i),
                    headers={"X-DashScope-Async": "enable"},
                )
                out.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
        return out

    one_client(0)  # warm-up: connections, first imports
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [x for xs in pool.map(one_client, range(clients)) for x in xs]
    elapsed = time.perf_counter() - started
    print(
        f"submit latency, {clients} concurrent clients x {per} submits "
        f"({len(latencies)} requests, {len(latencies) / elapsed:.0f} req/s):"
    )
    print(
        f"  p50 {statistics.median(latencies) * 1000:.1f} ms   "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms   "
        f"max {max(latencies) * 1000:.1f} ms"
    )


def run_tasks(svc: Service, model: str, size: str, seeds: list[int]) -> float:
    """Submit all, wait for all, download all; returns the wall time.

    Completion is watched through one list query every 0.1 s, not one query per task, so the
    client's own polling doesn't load the 2 CPUs the worker is generating on."""
    started = time.perf_counter()
    with svc.client() as http:
        ids = {
            http.post(
                SUBMIT, json=body(model, size, s), headers={"X-DashScope-Async": "enable"}
            ).json()["output"]["task_id"]
            for s in seeds
        }
        while True:
            listed = http.get("/api/v1/tasks", params={"page_size": 100}).json()["data"]
            ended = {t["task_id"] for t in listed if t["status"] in ("SUCCEEDED", "FAILED")}
            if ids <= ended:
                break
            time.sleep(0.1)
        for task_id in ids:
            out = http.get(f"/api/v1/tasks/{task_id}").json()["output"]
            assert out["task_status"] == "SUCCEEDED", out
            for result in out["results"]:
                assert httpx.get(result["url"]).status_code == 200
    return time.perf_counter() - started


def bench_direct(demo: Path, model: str, size: str, seeds: list[int]) -> float:
    from imagesynth.catalog import Catalog
    from imagesynth.domain import parse_size
    from imagesynth.engine.base import GenerationBatch
    from imagesynth.engine.registry import create_engine
    from imagesynth.worker.engines import engine_spec
    from imagesynth.worker.memory import keep_freed_memory

    keep_freed_memory()  # as the worker does: compare like with like
    spec = Catalog.load().get(model)
    adapter = create_engine(engine_spec(spec, demo))
    adapter.load()
    width, height = parse_size(size)

    def call(seed: int) -> None:
        adapter.generate(
            GenerationBatch(
                "a benchmark", "", width, height, (seed,), spec.default_steps, spec.guidance
            ),
            lambda i, n: None,
        )

    call(0)  # warm-up
    started = time.perf_counter()
    for seed in seeds:
        call(seed)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="wan2.2-t2i-flash")
    parser.add_argument("--size", default="512*512")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        subprocess.run(
            [str(BIN), "models", "make-demo", str(demo)], check=True, capture_output=True
        )
        print(f"model {args.model}, size {args.size}, demo weights, {os.cpu_count()} CPUs\n")

        api = Service(Path(tmp) / "api", demo, worker="none")
        try:
            bench_submit_latency(api, args.model, args.size, args.clients, args.per_client)
        finally:
            api.close()

        seeds = list(range(100, 100 + args.tasks))
        through: dict[str, float] = {}
        for topology in ("in-process", "process"):
            svc = Service(Path(tmp) / topology, demo, worker=topology)
            try:
                run_tasks(svc, args.model, args.size, [1])  # warm-up: loads the pipeline
                through[topology] = run_tasks(svc, args.model, args.size, seeds)
            finally:
                svc.close()
                if os.environ.get("BENCH_LOG_LEVEL"):  # e.g. INFO: per-task timings
                    print((Path(tmp) / topology / "serve.log").read_text())
        direct_s = bench_direct(demo, args.model, args.size, seeds)

    print(
        f"\n{args.tasks} direct pipeline calls in one process: {direct_s:.2f} s "
        f"({direct_s / args.tasks * 1000:.0f} ms/call)"
    )
    for topology, label in (
        ("in-process", "serve with its in-process worker"),
        ("process", "serve --no-worker + a separate `imagesynth worker`"),
    ):
        service_s = through[topology]
        print(
            f"{args.tasks} tasks end to end, {label}: {service_s:.2f} s "
            f"({service_s / args.tasks * 1000:.0f} ms/task), "
            f"overhead ratio {service_s / direct_s:.2f}x"
        )


if __name__ == "__main__":
    main()
