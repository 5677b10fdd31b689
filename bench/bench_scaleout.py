"""Benchmark: submits/s and claims/s with several API and worker processes on PostgreSQL.

    .venv/bin/python bench/bench_scaleout.py [--apis 4] [--workers 4] [--tasks 400]

Starts `--apis` `imagesynth serve --no-worker` processes and `--workers` `imagesynth worker`
processes, each with its own IMAGESYNTH_HOME (nothing shared but the database), on a fresh
PostgreSQL schema (IMAGESYNTH_BENCH_POSTGRES_DSN, default the test server). Clients submit
`--tasks` tasks spread over every API at once (submits/s), then the run waits until the
workers have claimed them all (claims/s: claimed tasks over the time from the first claim to
the last, from the database's started_at). The tasks are the cheapest the demo weights make
(wan2.2-t2i-flash, 512*512, 1 step): the figure is the queue's, not the GPU's.

With `--engine remote` the workers run `backend = "openai-images"` against an answering
server inside this script that returns a 64x64 PNG at once: the "GPU" is elsewhere, so the
workers do not compete with each other for these CPUs, and claims/s is the queue's and the
worker loop's own (claim, request, check, label, store, finish).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
from PIL import Image

BIN = Path(sys.executable).parent / "imagesynth"
SUBMIT = "/api/v1/services/aigc/text2image/image-synthesis"
DSN = os.environ.get("IMAGESYNTH_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BODY = {
    "model": "wan2.2-t2i-flash",
    "input": {"prompt": "a benchmark"},
    "parameters": {"n": 1, "size": "512*512", "steps": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REMOTE_BODY = {
    "model": "bench-remote",
    "input": {"prompt": "a benchmark"},
    "parameters": {"n": 1, "size": "64*64", "prompt_extend": False},
}
REMOTE_CATALOG = """
[models.bench-remote]
family = "wan"
backend = "openai-images"
endpoint = "http://127.0.0.1:{port}/v1"
remote_model = "anything"
remote_retries = 0
min_side = 64
min_pixels = 0
default_size = "64*64"
steps = 1
n_max = 1
n_default = 1
"""


class _Answering(BaseHTTPRequestHandler):
    """An OpenAI Images server that answers every request at once with one small PNG."""

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(buf, format="PNG")
    reply = json.dumps(
        {"created": 0, "data": [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]}
    ).encode()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.reply)))
        self.end_headers()
        self.wfile.write(self.reply)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apis", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--engine", choices=["demo", "remote"], default="demo")
    args = parser.parse_args()
    body = BODY
    extra_env: dict[str, str] = {}

    schema = f"bench_scale_{os.getpid()}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{DSN}{'&' if '?' in DSN else '?'}options=-csearch_path%3D{schema}"
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp())
    try:
        demo = tmp / "demo"
        subprocess.run([str(BIN), "models", "make-demo", str(demo)], check=True)
        if args.engine == "remote":
            answering = ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
            threading.Thread(target=answering.serve_forever, daemon=True).start()
            catalog = tmp / "catalog.toml"
            catalog.write_text(REMOTE_CATALOG.format(port=answering.server_address[1]))
            extra_env, body = {"IMAGESYNTH_CATALOG": str(catalog)}, REMOTE_BODY

        def env(home: str) -> dict[str, str]:
            return {
                **os.environ,
                "IMAGESYNTH_HOME": str(tmp / home),
                "IMAGESYNTH_DATABASE_URL": url,
                "IMAGESYNTH_DEMO_WEIGHTS_DIR": str(demo),
                "IMAGESYNTH_URL_SECRET": "bench-secret-shared-by-every-process",
                "IMAGESYNTH_LOG_LEVEL": "WARNING",
                "IMAGESYNTH_INVISIBLE_WATERMARK": "false",
                "IMAGESYNTH_IMAGE_SAFETY": "none",
                **extra_env,
            }

        key = subprocess.run(
            [str(BIN), "keys", "create", "--rps", "10000", "--in-flight", "100",
             "--max-pending", "1000000"],
            env=env("keys"), capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        ports = [free_port() for _ in range(args.apis)]
        for i, port in enumerate(ports):
            procs.append(
                subprocess.Popen(
                    [str(BIN), "serve", "--no-worker", "--port", str(port)],
                    env=env(f"api-{i}"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base in bases:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(base + "/health", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, base
                    time.sleep(0.1)

        def submit(i: int) -> None:
            r = httpx.post(
                bases[i % len(bases)] + SUBMIT,
                json=body,
                headers={"Authorization": f"Bearer {key}", "X-DashScope-Async": "enable"},
                timeout=60,
            )
            assert r.status_code == 200, r.text

        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(submit, range(args.tasks)))
        submit_s = time.perf_counter() - started

        for i in range(args.workers):
            procs.append(
                subprocess.Popen(
                    [str(BIN), "worker"],
                    env=env(f"worker-{i}"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 1800
            while True:
                row = conn.execute(
                    "SELECT COUNT(*) FILTER (WHERE started_at IS NOT NULL), "
                    "MIN(started_at), MAX(started_at), "
                    "COUNT(*) FILTER (WHERE status = 'SUCCEEDED') FROM tasks"
                ).fetchone()
                assert row is not None
                if row[0] == args.tasks:
                    break
                assert time.monotonic() < deadline, row
                time.sleep(0.5)
        claimed, first, last, succeeded = row
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        shutil.rmtree(tmp, ignore_errors=True)  # after the processes: they write there

    print(f"{args.apis} API processes, {args.workers} worker processes, PostgreSQL, "
          f"{os.cpu_count()} CPUs, {args.tasks} tasks, {args.engine} engine")  # fmt: skip
    print(f"  submits: {args.tasks / submit_s:.0f}/s ({submit_s:.2f} s, 32 client threads)")
    print(
        f"  claims: {(claimed - 1) / max(last - first, 1e-9):.1f}/s "
        f"(first to last claim {last - first:.2f} s; {succeeded} succeeded by then)"
    )


if __name__ == "__main__":
    main()
