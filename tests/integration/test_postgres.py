"""The same service on PostgreSQL: API and worker as separate processes sharing one database."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.conftest import Home, Launcher, Server
from tests.integration.images import fetch_png
from tests.integration.test_durability import QUICK, SLOW, running_with_progress


def test_api_and_worker_processes_on_postgres(
    start: Launcher, make_home: Callable[..., Home], postgres_url: str
) -> None:
    home = make_home(database_url=postgres_url)
    api: Server = start(home=home, worker=False)
    queued = [api.submit(QUICK) for _ in range(2)]
    api.proc.stop()

    # Tasks queued before a restart run once a worker appears.
    api = start(home=home, key=api.key, worker=False)
    first = start.worker(home)
    for task_id in queued:
        done = api.wait(task_id)
        assert done["output"]["task_status"] == "SUCCEEDED"
        assert fetch_png(done["output"]["results"][0]["url"]).size == (512, 512)

    # A worker killed mid-task: a second worker finishes it.
    slow = api.submit(SLOW)
    api.wait(slow, until=running_with_progress)
    first.kill()
    start.worker(home)
    done = api.wait(slow, timeout=180)
    assert done["output"]["task_status"] == "SUCCEEDED"
    assert "/2/0.png" in done["output"]["results"][0]["url"]
