"""Benchmark: does the GPU ever wait? The service beside the bare pipeline, in one run.

    .venv/bin/python bench/bench_pipeline.py [--requests 20] [--sleep 0.5] [--skip-service]

Prints, from one run on this machine:
1. Service vs bare pipeline, on the same tiny Stable Diffusion folder at 256*256, 4 steps:
   - sequential: the median time of a synchronous request (submit, queue, generate, check,
     label, store, reply) ÷ the median bare `generate` call in this process;
   - 20 concurrent synchronous requests: their wall time ÷ 20 bare calls back to back, with
     batching off (max_batch 1) and on (max_batch 4);
   each with the defaults (AIGC labels, invisible watermark, image classifier) and with the
   invisible watermark and the classifier off.
2. Busy fraction: a worker (the real one, on SQLite, with every label and check on) whose
   engine sleeps instead of computing (a stand-in for a GPU, which leaves the CPUs free) and
   returns 1024*1024 images: time inside generate ÷ wall time while tasks were waiting.
3. Wake-up: how long after its submit a task on an idle worker starts (the database's
   started_at - created_at), with the poll at 5 s, on SQLite in one process and on PostgreSQL
   (LISTEN/NOTIFY; at IMAGESYNTH_BENCH_POSTGRES_DSN, default the test server, if it answers).

Run it against another checkout's code with PYTHONPATH=/that/checkout/src: the figures before
and after a change, on the same machine (the subprocesses inherit PYTHONPATH).
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent / "imagesynth"
SUBMIT = "/api/v1/services/aigc/text2image/image-synthesis"
MODEL = "bench-sd"
UNLIMITED = ("--rps", "10000", "--in-flight", "100", "--max-pending", "1000000")
PG_DSN = os.environ.get(
    "IMAGESYNTH_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def batching_known() -> bool:
    """Whether the code under test has catalog batching (older checkouts do not)."""
    import dataclasses

    from imagesynth.catalog import ModelSpec

    return "max_batch" in {f.name for f in dataclasses.fields(ModelSpec)}


def catalog_toml(weights: Path, max_batch: int) -> str:
    batching = f"max_batch = {max_batch}" if batching_known() else ""
    return f"""
[models.{MODEL}]
family = "stable-diffusion"
weights = "{weights}"
steps = 4
guidance = 7.5
min_side = 256
default_size = "256*256"
n_default = 1
sync = true
prompt_extend_default = false
rps = 10000
in_flight = 100
{batching}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`imagesynth serve` (with its in-process worker) on a fresh home."""

    def __init__(self, home: Path, catalog: Path, extra_env: dict[str, str]) -> None:
        home.mkdir(parents=True)
        self.env = {
            **os.environ,
            "IMAGESYNTH_HOME": str(home),
            "IMAGESYNTH_CATALOG": str(catalog),
            "IMAGESYNTH_LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            **extra_env,
        }
        self.key = subprocess.run(
            [str(BIN), "keys", "create", *UNLIMITED],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.url = f"http://127.0.0.1:{free_port()}"
        with (home / "serve.log").open("w") as log:
            self.proc = subprocess.Popen(
                [str(BIN), "serve", "--port", self.url.rsplit(":", 1)[1]],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(self.url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError((home / "serve.log").read_text()) from None
                time.sleep(0.1)

    def call(self, http: httpx.Client, seed: int) -> float:
        """One synchronous request and the download of its image; its duration."""
        started = time.perf_counter()
        r = http.post(
            SUBMIT,
            json={"model": MODEL, "input": {"prompt": "a benchmark"}, "parameters": {"seed": seed}},
        )
        out = r.json()["output"]
        assert out["task_status"] == "SUCCEEDED", r.text
        assert http.get(out["results"][0]["url"]).status_code == 200
        return time.perf_counter() - started

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=300
        )

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def bare_calls(weights: Path, count: int) -> list[float]:
    """The bare pipeline in this process: `count` calls, each timed."""
    from imagesynth.engine.base import EngineSpec, GenerationBatch
    from imagesynth.engine.registry import create_engine
    from imagesynth.worker.memory import keep_freed_memory

    keep_freed_memory()  # as the worker does: compare like with like
    engine = create_engine(EngineSpec("stable-diffusion", str(weights)))
    engine.load()

    def call(seed: int) -> float:
        started = time.perf_counter()
        engine.generate(
            GenerationBatch("a benchmark", "", 256, 256, (seed,), 4, 7.5), lambda i, n: None
        )
        return time.perf_counter() - started

    call(0)  # warm-up
    return [call(seed) for seed in range(1, count + 1)]


def bench_service(tmp: Path, weights: Path, requests: int) -> None:
    bare = bare_calls(weights, requests)
    bare_median, bare_total = statistics.median(bare), sum(bare)
    print(
        f"bare pipeline, 256*256, 4 steps: median {bare_median * 1000:.0f} ms/call, "
        f"{requests} back to back {bare_total:.2f} s"
    )
    configs = {
        "defaults (labels, invisible watermark, classifier)": {},
        "invisible watermark and classifier off": {
            "IMAGESYNTH_INVISIBLE_WATERMARK": "false",
            "IMAGESYNTH_IMAGE_SAFETY": "none",
        },
    }
    for n, (label, env) in enumerate(configs.items()):
        for max_batch in (1, 4) if batching_known() else (1,):
            catalog = tmp / f"catalog-{n}-{max_batch}.toml"
            catalog.write_text(catalog_toml(weights, max_batch))
            svc = Service(tmp / f"home-{n}-{max_batch}", catalog, env)
            try:
                with svc.client() as http:
                    svc.call(http, 0)  # warm-up: loads the pipeline
                    sequential = [svc.call(http, seed) for seed in range(1, requests + 1)]

                    def one(seed: int, http: httpx.Client = http, svc: Service = svc) -> float:
                        return svc.call(http, seed)

                    started = time.perf_counter()
                    with ThreadPoolExecutor(requests) as pool:
                        list(pool.map(one, range(100, 100 + requests)))
                    concurrent = time.perf_counter() - started
            finally:
                svc.close()
            if max_batch == 1:
                print(
                    f"  {label}: sequential median {statistics.median(sequential) * 1000:.0f} "
                    f"ms = {statistics.median(sequential) / bare_median:.2f}x bare"
                )
            print(
                f"    {requests} concurrent, max_batch {max_batch}: wall {concurrent:.2f} s "
                f"= {concurrent / bare_total:.2f}x the bare calls back to back"
            )


# -- a worker whose engine sleeps ---------------------------------------------------------


class SleepingEngine:
    """Stands in for a GPU: each call takes `seconds` and leaves the CPUs free."""

    def __init__(self, spec: Any, seconds: float) -> None:
        import numpy as np
        from PIL import Image

        from imagesynth.engine.base import Capabilities

        self.spec = spec
        self.capabilities = Capabilities(progress=True, cancel=True)
        self.seconds = seconds
        rng = np.random.default_rng(0)
        self.noise = Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
        self.busy: list[tuple[float, float]] = []

    def load(self) -> None:
        pass

    def generate(self, batch: Any, on_step: Callable[[int, int], None]) -> list[Any]:
        started = time.perf_counter()
        time.sleep(self.seconds)
        on_step(batch.steps, batch.steps)
        images = [self.noise.resize((batch.width, batch.height)) for _ in batch.seeds]
        self.busy.append((started, time.perf_counter()))
        return images


def worker_with(stores: Any, home: Path, poll: float, seconds: float, full: bool) -> Any:
    """The real worker on `stores`, its engine a SleepingEngine; every label and check on
    when `full`."""
    from imagesynth.catalog import Catalog
    from imagesynth.config import Settings
    from imagesynth.labels.labeler import Labeler
    from imagesynth.safety.images import build_image_classifier
    from imagesynth.storage.local import LocalBlobStore
    from imagesynth.storage.signing import UrlSigner
    from imagesynth.worker.engines import engine_spec
    from imagesynth.worker.worker import Worker

    settings = Settings(
        home=home,
        invisible_watermark=full,
        image_safety="auto" if full else "none",
    )
    catalog = Catalog.load()
    wanted: dict[str, Any] = {
        "lease_seconds": 30,
        "poll_seconds": poll,
        "models": ["wan2.2-t2i-flash"],
        "labeler": Labeler.from_settings(settings),
        "classifier": build_image_classifier(settings),
    }
    accepted = inspect.signature(Worker).parameters
    if "events" in accepted:  # absent before the pipelined worker: run the old one as it was
        wanted["events"] = stores.events
    blobs = LocalBlobStore(home / "files", UrlSigner(b"k" * 32, 60))
    worker = Worker(stores.queue, blobs, catalog, home / "demo", **wanted)
    spec = catalog.get("wan2.2-t2i-flash")
    engine = SleepingEngine(engine_spec(spec, home / "demo"), seconds)
    worker.engines.install(engine_spec(spec, home / "demo"), engine)
    worker.prepare = lambda: worker.classifier.load()  # no demo weights needed
    return worker, engine


def queue_tasks(stores: Any, count: int, size: str, key: str = "bench") -> list[str]:
    from imagesynth.catalog import Catalog

    spec = Catalog.load().get("wan2.2-t2i-flash")
    ids = []
    for i in range(count):
        params = spec.validate(prompt="a benchmark", size=size, n=1, seed=i, watermark=True)
        task = stores.tasks.insert_task(
            task_id=str(uuid.uuid4()),
            api_key_id=key,
            model=spec.name,
            params=params,
            request_id="bench",
            workspace=None,
            max_attempts=3,
        )
        ids.append(task.id)
    return ids


def bench_busy_fraction(tmp: Path, tasks: int, seconds: float) -> None:
    from imagesynth.db import SqlStores

    home = tmp / "busy"
    stores = SqlStores.open(f"sqlite:///{home / 'imagesynth.db'}")
    worker, engine = worker_with(stores, home, poll=0.2, seconds=seconds, full=True)
    ids = queue_tasks(stores, tasks, "1024*1024")
    worker.classifier.load()
    started = time.perf_counter()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while not all(stores.tasks.get_task(i).status.is_final for i in ids):  # type: ignore[union-attr]
        time.sleep(0.05)
    wall = time.perf_counter() - started
    worker.stop()
    thread.join(60)
    first, last = engine.busy[0][0], engine.busy[-1][1]
    inside = sum(end - begin for begin, end in engine.busy)
    print(
        f"sleeping engine ({seconds:.2f} s/call), {tasks} tasks at 1024*1024, labels + "
        f"invisible watermark + classifier on: busy fraction {inside / (last - first):.3f}; "
        f"all done in {wall:.2f} s = {wall / (tasks * seconds):.2f}x the engine time"
    )
    stores.close()


def bench_wake_up(tmp: Path, label: str, url: str, count: int = 20) -> None:
    from imagesynth.db import SqlStores

    stores = SqlStores.open(url)
    worker, _ = worker_with(stores, tmp / f"wake-{label}", poll=5.0, seconds=0.01, full=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(1.0)  # idle, asleep in its 5 s poll
    delays = []
    for _ in range(count):
        (task_id,) = queue_tasks(stores, 1, "512*512", key=f"wake-{label}")
        while (task := stores.tasks.get_task(task_id)) is None or not task.status.is_final:
            time.sleep(0.005)
        assert task.started_at is not None
        delays.append(task.started_at - task.created_at)
        time.sleep(0.2)  # idle again
    worker.stop()
    thread.join(60)
    stores.close()
    print(
        f"wake-up on {label}, poll 5 s: start - submit median "
        f"{statistics.median(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms "
        f"({count} tasks)"
    )


def count_statements(tmp: Path) -> None:
    """SQL statements per task on SQLite (BEGIN and COMMIT count): submit, claim, a progress
    write, finish; the key has a free quota, as new keys do, and then none."""
    from imagesynth.accounts.models import TaskTerms
    from imagesynth.catalog import Catalog
    from imagesynth.db import SqlStores
    from imagesynth.domain import TaskStatus
    from imagesynth.tasks.models import ImageResult

    stores = SqlStores.open(f"sqlite:///{tmp / 'count.db'}")
    spec = Catalog.load().get("wan2.2-t2i-flash")
    counted: list[str] = []
    stores.db.connection().set_trace_callback(counted.append)

    def count(step: Callable[[], Any]) -> tuple[int, Any]:
        counted.clear()
        result = step()
        return len(counted), result

    for label, terms in (
        ("free quota left", TaskTerms(free_quota=100, free_until=time.time() + 3600)),
        ("no free quota", TaskTerms()),
    ):
        params = spec.validate(prompt="a benchmark", size="512*512", n=1, seed=1)
        submit, task = count(
            lambda params=params, terms=terms: stores.tasks.insert_task(
                task_id=str(uuid.uuid4()),
                api_key_id="count",
                model=spec.name,
                params=params,
                request_id="bench",
                workspace=None,
                max_attempts=3,
                terms=terms,
            )
        )
        claim, claimed = count(lambda: stores.queue.claim("w", [spec.name], 30))
        progress, _ = count(lambda task=task: stores.queue.set_progress(task.id, "w", 1, 1))
        finish, _ = count(
            lambda task=task, attempt=claimed.attempts: stores.queue.finish(
                task.id, "w", attempt, TaskStatus.SUCCEEDED, [ImageResult("k")]
            )
        )
        print(
            f"SQL statements per task on SQLite ({label}): submit {submit}, claim {claim}, "
            f"progress write {progress}, finish {finish}"
        )
    stores.close()


def postgres_url() -> str | None:
    """A fresh schema on the PostgreSQL server, or None if none answers."""
    try:
        import psycopg

        schema = f"bench_{os.getpid()}"
        with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:
        print(f"wake-up on PostgreSQL: skipped, no server at {PG_DSN} ({exc})")
        return None
    sep = "&" if "?" in PG_DSN else "?"
    return f"{PG_DSN}{sep}options=-csearch_path%3D{schema}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.5, help="the sleeping engine's call")
    parser.add_argument("--skip-service", action="store_true", help="only parts 2 and 3")
    args = parser.parse_args()
    import imagesynth

    print(f"imagesynth from {Path(imagesynth.__file__).parent}, {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if not args.skip_service:
            subprocess.run(
                [str(BIN), "models", "make-demo", str(tmp / "demo")],
                check=True,
                capture_output=True,
            )
            bench_service(tmp, tmp / "demo" / "stable-diffusion", args.requests)
        count_statements(tmp)
        bench_busy_fraction(tmp, args.requests, args.sleep)
        bench_wake_up(tmp, "SQLite", f"sqlite:///{tmp / 'wake.db'}")
        url = postgres_url()
        if url is not None:
            bench_wake_up(tmp, "PostgreSQL", url)


if __name__ == "__main__":
    main()
