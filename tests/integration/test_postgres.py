"""The same service on PostgreSQL: API and worker as separate processes sharing one database
(`imagesynth serve --no-worker` and `imagesynth worker`), and the test process as another API
and worker on it."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.conftest import Home, Launcher, Server
from tests.integration.inprocess import InProcessService
from tests.integration.test_durability import QUICK, SLOW, running_with_progress


def test_api_and_worker_processes_on_postgres(
    postgres_url: str,  # first: its schema is dropped after everything using it has stopped
    start: Launcher,
    make_home: Callable[..., Home],
    start_service: Callable[..., InProcessService],
) -> None:
    home = make_home(database_url=postgres_url)
    first_api: Server = start(home=home, worker=False)
    queued = [first_api.submit(QUICK) for _ in range(2)]
    first_api.proc.stop()

    # Tasks queued before a restart run once a worker appears.
    api = start_service(settings=home.settings, workers=0).with_key(first_api.key)
    first = start.worker(home)
    for task_id in queued:
        done = api.wait(task_id)
        assert done["output"]["task_status"] == "SUCCEEDED"
        assert api.fetch_png(done["output"]["results"][0]["url"]).size == (512, 512)

    # A worker killed mid-task: a second worker finishes it.
    slow = api.submit(SLOW)
    api.wait(slow, until=running_with_progress)
    first.kill()
    api.start_worker()
    done = api.wait(slow, timeout=180)
    assert done["output"]["task_status"] == "SUCCEEDED"
    assert f"/2/{slow}-0.png" in done["output"]["results"][0]["url"]
