"""Benchmark: the queue's statements with limits and fair turns, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_queue.py [--pending 10000] [--keys 50] [--postgres DSN]

Fills a fresh store with `--pending` PENDING tasks spread over `--keys` keys (each key's
in-flight limit 2), then times, one at a time:
- admitted insert: the key's lock, its standing (waiting, free used, reserved, charged this
  month) and the insert, as every submission runs it;
- token take: one rate-limit check (an UPSERT);
- claim: the next task by fair turns within in-flight limits, as a worker runs it, with the
  tasks it claimed left RUNNING so later claims also skip keys at their limit;
- finish: the fenced finish with its usage-ledger entry and free-quota arithmetic.
Prints the median and p99 of each in milliseconds. Figures are from one run on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from imagesynth.accounts.models import KeyStanding, TaskTerms
from imagesynth.db import SqlStores
from imagesynth.db.schema import init_schema
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.tasks.models import ImageResult

PARAMS = GenerationParams(
    prompt="a lighthouse",
    negative_prompt="",
    width=1024,
    height=1024,
    n=1,
    seed=1,
    steps=4,
    guidance=4.0,
    prompt_extend=False,
    watermark=False,
)
TERMS = TaskTerms(in_flight=2, price_micros=140_000, free_quota=100, free_until=time.time() + 1e6)


def timed(label: str, runs: int, call: Callable[[int], object]) -> None:
    samples = []
    for i in range(runs):
        started = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"  {label:<16} median {statistics.median(samples):7.2f} ms   p99 {p99:7.2f} ms")


def insert(store: SqlStores, key: str, admit: Callable[[KeyStanding], None] | None) -> None:
    store.tasks.insert_task(
        task_id=str(uuid.uuid4()),
        api_key_id=key,
        model="wan2.2-t2i-flash",
        params=PARAMS,
        request_id="bench",
        workspace=None,
        max_attempts=3,
        terms=TERMS,
        admit=admit,
        month_start=0.0,
    )


def run(url: str, pending: int, keys: int) -> None:
    store = SqlStores.open(url)
    init_schema(store.db)
    started = time.perf_counter()
    for i in range(pending):
        insert(store, f"key-{i % keys}", None)
    print(f"  filled {pending} tasks over {keys} keys in {time.perf_counter() - started:.1f} s")

    timed("admitted insert", 200, lambda i: insert(store, f"key-{i % keys}", lambda s: None))
    timed("token take", 500, lambda i: store.buckets.take_token(f"bench:{i % keys}", 1e6, 1e6))
    claimed = []
    timed(
        "claim",
        2 * keys,
        lambda i: claimed.append(store.queue.claim(f"w{i}", ["wan2.2-t2i-flash"], 60)),
    )
    assert all(t is not None for t in claimed), "a claim found nothing"
    ok = [ImageResult(blob_key="k/0.png")]

    def finish(i: int) -> None:
        task = claimed[i]
        assert task is not None
        store.queue.finish(task.id, task.worker_id or "", task.attempts, TaskStatus.SUCCEEDED, ok)

    timed("finish", len(claimed), finish)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--postgres", help="a postgresql:// URL of a database to fill (scratch)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite (WAL):")
        run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.pending, args.keys)
    if args.postgres:
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        try:
            print("PostgreSQL:")
            run(f"{args.postgres}?options=-csearch_path%3D{schema}", args.pending, args.keys)
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
