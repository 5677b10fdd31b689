"""Crashes and restarts: no accepted task is lost, stuck, or completed twice.

What crashes or stops is a real process (`imagesynth worker` or `serve`, killed or sent
SIGTERM); the API that the test talks to, and the worker or service that picks up afterwards,
run in the test process on the same home."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import Home, Launcher, Server
from tests.integration.inprocess import InProcessService

# Long enough on the tiny demo pipeline to be caught mid-run (several seconds).
SLOW_STEPS = 30
SLOW: dict[str, Any] = {
    "model": "wanx2.1-t2i-turbo",
    "input": {"prompt": "a slow one"},
    "parameters": {"n": 1, "size": "1440*1440", "steps": SLOW_STEPS, "seed": 1},
}
QUICK: dict[str, Any] = {
    "model": "wanx2.1-t2i-turbo",
    "input": {"prompt": "a quick one"},
    "parameters": {"n": 1, "size": "512*512", "seed": 1},
}


def running_with_progress(reply: dict[str, Any]) -> bool:
    out = reply["output"]
    return out["task_status"] == "RUNNING" and out.get("task_progress", {}).get("step", 0) >= 1


def task_row(home: Home, task_id: str) -> sqlite3.Row:
    conn = sqlite3.connect(home.path / "imagesynth.db")
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    finally:
        conn.close()
    assert row is not None
    return row


def attempt_dirs(home: Path, task_id: str) -> list[str]:
    """The attempt folders of a task's result files in the home folder `home`."""
    folder = home / "files" / task_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_worker_killed_mid_task_task_succeeds_exactly_once(
    start: Launcher,
    make_home: Callable[..., Home],
    start_service: Callable[..., InProcessService],
) -> None:
    home = make_home()
    server = start_service(settings=home.settings, workers=0)
    first = start.worker(home)
    task_id = server.submit(SLOW)
    reply = server.wait(task_id, until=running_with_progress)
    assert reply["output"]["task_progress"]["steps"] == SLOW_STEPS
    first.kill()

    server.start_worker()  # another worker
    done = server.wait(task_id, timeout=180)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    assert len(done["output"]["results"]) == 1
    assert server.fetch_png(done["output"]["results"][0]["url"]).size == (1440, 1440)

    row = task_row(home, task_id)
    assert row["attempts"] == 2
    # The killed attempt left no files; the rerun's are the only ones.
    assert attempt_dirs(home.path, task_id) == ["2"]
    assert f"/2/{task_id}-0.png" in done["output"]["results"][0]["url"]
    # Billed once, as one call with one image.
    (usage,) = home.usage(model=SLOW["model"])
    assert (usage["calls"], usage["succeeded"], usage["images"]) == (1, 1, 1), usage
    # It stays done: nothing reruns it later.
    assert server.query(task_id)["output"]["task_status"] == "SUCCEEDED"


def test_task_that_keeps_killing_workers_ends_failed(
    start: Launcher,
    make_home: Callable[..., Home],
    start_service: Callable[..., InProcessService],
) -> None:
    home = make_home(max_attempts="2")
    server = start_service(settings=home.settings, workers=0)
    task_id = server.submit(SLOW)
    for attempt in (1, 2):
        worker = start.worker(home)
        # The killed attempt's row reads RUNNING until its lease runs out: wait for this one.
        server.wait(
            task_id,
            until=lambda r, n=attempt: (
                running_with_progress(r) and task_row(home, task_id)["attempts"] == n
            ),
        )
        worker.kill()

    done = server.wait(task_id, timeout=30)
    output = done["output"]
    assert output["task_status"] == "FAILED"
    assert output["code"] == "InternalError.WorkerLost"
    assert output["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 1}
    assert done["usage"] == {"image_count": 0}
    # And another worker now leaves it alone.
    server.start_worker()
    quick = server.wait(server.submit(QUICK))
    assert quick["output"]["task_status"] == "SUCCEEDED"
    assert server.query(task_id)["output"]["task_status"] == "FAILED"


def test_pending_tasks_survive_a_restart(
    start: Launcher, start_service: Callable[..., InProcessService]
) -> None:
    idle: Server = start(worker=False)
    task_ids = [idle.submit(QUICK) for _ in range(3)]
    idle.proc.stop()

    # Started again on the same home (with its worker).
    again = start_service(settings=idle.home.settings).with_key(idle.key)
    for task_id in task_ids:
        done = again.wait(task_id)
        assert done["output"]["task_status"] == "SUCCEEDED"
        assert again.fetch_png(done["output"]["results"][0]["url"]).size == (512, 512)


def test_serve_stopped_mid_task_hands_it_back(
    start: Launcher, start_service: Callable[..., InProcessService]
) -> None:
    server: Server = start()
    task_id = server.submit(SLOW)
    server.wait(task_id, until=running_with_progress)
    server.proc.stop()  # SIGTERM: a clean shutdown
    assert task_row(server.home, task_id)["status"] == "PENDING"

    # Started again on the same home (with its worker).
    again = start_service(settings=server.home.settings).with_key(server.key)
    done = again.wait(task_id, timeout=180)
    assert done["output"]["task_status"] == "SUCCEEDED"
    # A handed-back attempt does not count against the task.
    assert task_row(server.home, task_id)["attempts"] == 1


# Four big images: their labels, invisible watermark and PNG take the worker a while after the
# engine returns, long enough to be killed in the middle of it.
POST_PROCESSED: dict[str, Any] = {
    "model": "wanx2.1-t2i-turbo",
    "input": {"prompt": "four big ones"},
    "parameters": {"n": 4, "size": "1440*1440", "steps": 2, "seed": 1, "watermark": True},
}


def generated_not_finished(reply: dict[str, Any]) -> bool:
    """Every step done, still RUNNING: its images are being post-processed."""
    out = reply["output"]
    progress = out.get("task_progress", {})
    return out["task_status"] == "RUNNING" and progress.get("step") == progress.get("steps")


def test_worker_killed_during_post_processing_task_succeeds_exactly_once(
    start: Launcher,
    make_home: Callable[..., Home],
    start_service: Callable[..., InProcessService],
) -> None:
    home = make_home()
    server = start_service(settings=home.settings, workers=0)
    first = start.worker(home)
    task_id = server.submit(POST_PROCESSED)
    server.wait(task_id, until=generated_not_finished, timeout=120)
    first.kill()
    assert server.query(task_id)["output"]["task_status"] == "RUNNING"

    server.start_worker()
    done = server.wait(task_id, timeout=180)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    assert [r["url"].rsplit("/", 2)[-2] for r in done["output"]["results"]] == ["2"] * 4
    assert task_row(home, task_id)["attempts"] == 2
    assert attempt_dirs(home.path, task_id) == ["2"]  # what attempt 1 stored is gone
    (usage,) = home.usage(model=POST_PROCESSED["model"])
    assert (usage["calls"], usage["succeeded"], usage["images"]) == (1, 1, 4), usage
