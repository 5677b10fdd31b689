"""Keys see only their own tasks; result URLs can't be forged; old tasks are forgotten."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from tests.integration.inprocess import InProcessService
from tests.integration.test_durability import QUICK, attempt_dirs


def _flip(ch: str) -> str:
    return "b" if ch == "a" else "a"


def _tampered(url: str) -> list[str]:
    """The URL with one character changed in each of its signed parts."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    variants = []
    path = parts.path
    variants.append(urlunsplit(parts._replace(path=path[:-5] + "1.png")))
    variants.append(urlunsplit(parts._replace(path=path.replace("/files/", "/files/0", 1))))
    for name in ("Signature", "Expires"):
        value = query[name]
        changed = value[:-1] + (
            _flip(value[-1]) if name == "Signature" else str((int(value[-1]) + 1) % 10)
        )
        variants.append(urlunsplit(parts._replace(query=urlencode({**query, name: changed}))))
    variants.append(urlunsplit(parts._replace(query=urlencode({"Expires": query["Expires"]}))))
    variants.append(urlunsplit(parts._replace(query="")))
    return variants


def test_signed_url_cannot_be_altered(server: InProcessService) -> None:
    done = server.wait(server.submit({**QUICK, "parameters": {"n": 2, "size": "512*512"}}))
    url = done["output"]["results"][0]["url"]
    assert server.fetch_png(url).size == (512, 512)
    assert "Expires=" in url and "Signature=" in url
    for bad in _tampered(url):
        r = server.get(bad)
        assert r.status_code == 403, bad
        assert r.json()["code"] == "AccessDenied"


def test_signed_url_expires(start_service: Callable[..., InProcessService]) -> None:
    server = start_service(url_ttl_seconds=3)
    done = server.wait(server.submit(QUICK))
    url = done["output"]["results"][0]["url"]
    expires = int(dict(parse_qsl(urlsplit(url).query))["Expires"])
    assert server.fetch_png(url).size == (512, 512)
    # Refused from its Expires on (a second of slack for the clock's resolution), not before.
    while time.time() < expires + 1:
        time.sleep(0.1)
    r = server.get(url)
    assert r.status_code == 403
    assert r.json()["message"] == "Request has expired."


def test_other_keys_tasks_are_invisible(server: InProcessService) -> None:
    other = server.create_key("other")
    task_id = server.submit(QUICK)
    server.wait(task_id)

    assert server.query(task_id, key=other)["output"] == {
        "task_id": task_id,
        "task_status": "UNKNOWN",
    }
    with server.client(other) as c:
        listed = c.get("/api/v1/tasks").json()
        assert listed["total"] == 0 and listed["data"] == []
        by_id = c.get(f"/api/v1/tasks?task_id={task_id}").json()
        assert by_id["total"] == 0
        cancel = c.post(f"/api/v1/tasks/{task_id}/cancel")
        assert cancel.status_code == 400
    with server.client() as c:
        assert c.get(f"/api/v1/tasks?task_id={task_id}").json()["total"] == 1


@pytest.mark.parametrize("retention", [2])
def test_tasks_and_files_are_forgotten_after_retention(
    start_service: Callable[..., InProcessService], retention: int
) -> None:
    server = start_service(retention_seconds=retention)
    task_id = server.submit(QUICK)
    done = server.wait(task_id)
    url = done["output"]["results"][0]["url"]
    assert attempt_dirs(server.path, task_id) == ["1"]

    deadline = time.monotonic() + 15
    while server.query(task_id)["output"]["task_status"] != "UNKNOWN":
        assert time.monotonic() < deadline, "task was not forgotten"
        time.sleep(0.2)
    assert attempt_dirs(server.path, task_id) == []
    r = server.get(url)
    assert r.status_code == 404
    assert r.json()["code"] == "NotFound"
    with server.client() as c:
        assert c.get(f"/api/v1/tasks?task_id={task_id}").json()["total"] == 0
