"""Keys, rate limits, in-flight limits, fair turns, free quota, billing and usage (issue 4),
over HTTP against the in-process service; two API processes on one database as subprocesses.
(The same operations through the CLI: test_cli.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from dashscope import ImageSynthesis

from imagesynth.config import Settings
from imagesynth.db import SqlStores
from tests.integration.api_client import ASYNC, SUBMIT_PATH, ApiClient
from tests.integration.conftest import Home, Launcher, sdk_pointed_at
from tests.integration.inprocess import InProcessService, open_service
from tests.integration.test_durability import SLOW

FLASH = "wan2.2-t2i-flash"  # 2 submissions/s, 2 in flight, 0.14 per image, 100 free


def body(prompt: str = "a lighthouse", n: int = 1, size: str = "512*512") -> dict[str, Any]:
    # One step: these tests are about what runs when, not about the images.
    parameters = {"n": n, "size": size, "steps": 1}
    return {"model": FLASH, "input": {"prompt": prompt}, "parameters": parameters}


def post(server: ApiClient, key: str, payload: dict[str, Any]) -> httpx.Response:
    with server.client(key) as c:
        return c.post(SUBMIT_PATH, json=payload, headers=ASYNC)


def admin(server: InProcessService, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request to the admin API (/admin/v1) with the admin credential."""
    with server.anonymous() as c:
        return c.request(
            method,
            f"/admin/v1{path}",
            headers={"Authorization": f"Bearer {server.admin_token}"},
            **kwargs,
        )


def wait_all(server: ApiClient, key: str, task_ids: list[str]) -> list[dict[str, Any]]:
    done = []
    for task_id in task_ids:
        deadline = time.monotonic() + 180
        while True:
            reply = server.query(task_id, key)
            if reply["output"]["task_status"] in ("SUCCEEDED", "FAILED", "CANCELED"):
                done.append(reply)
                break
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
    return done


def together(n: int, call: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """n calls released at the same instant from n threads."""
    barrier = threading.Barrier(n)
    replies: list[httpx.Response] = []

    def run() -> None:
        barrier.wait()
        replies.append(call())

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies


@pytest.fixture(scope="module")
def http_server(make_settings: Callable[..., Settings]) -> Iterator[InProcessService]:
    """The module's shared service, with no worker: its tests' tasks stay PENDING (those that
    need tasks run start services of their own)."""
    with open_service(make_settings(), workers=0, transport="http") as service:
        yield service


def moment(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_third_submission_in_a_second_is_throttled_then_passes_again(
    http_server: InProcessService,
) -> None:
    server = http_server
    key = server.create_key("rate", limited=True)
    replies = together(3, lambda: post(server, key, body()))

    assert sorted(r.status_code for r in replies) == [200, 200, 429], [r.text for r in replies]
    (refused,) = [r.json() for r in replies if r.status_code == 429]
    assert refused["code"] == "Throttling.RateQuota"
    assert set(refused) == {"request_id", "code", "message"}
    # The limit is per model: another model of the same key is not held back.
    other = post(server, key, {**body(), "model": "wanx2.1-t2i-turbo"})
    assert other.status_code == 200, other.text

    time.sleep(1.0)
    with sdk_pointed_at(server):
        rsp = ImageSynthesis.async_call(model=FLASH, prompt="again", api_key=key, n=1)
    assert rsp.status_code == 200, rsp
    assert rsp.output.task_status == "PENDING"


def test_query_list_and_cancel_share_a_per_key_rate(
    start_service: Callable[..., InProcessService],
) -> None:
    server = start_service(workers=0, query_rps=3)
    task_id = server.submit(body())
    codes = []
    with server.client() as c:
        for _ in range(4):
            codes.append(c.get(f"/api/v1/tasks/{task_id}").status_code)
        throttled = c.get("/api/v1/tasks")
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    assert throttled.status_code == 429 and throttled.json()["code"] == "Throttling"


def test_no_more_than_in_flight_tasks_of_a_key_run_at_once(
    start_service: Callable[..., InProcessService],
) -> None:
    """Three workers could run three tasks at once; the key's limit of 2 holds the rest."""
    server = start_service(workers=3)
    key = server.create_key("inflight", limited=True, rps=50)
    ids = [
        post(server, key, body(f"tower {i}", size="1024*1024")).json()["output"]["task_id"]
        for i in range(5)
    ]

    done = wait_all(server, key, ids)
    assert [d["output"]["task_status"] for d in done] == ["SUCCEEDED"] * 5
    spans = [(moment(d["output"]["scheduled_time"]), moment(d["output"]["end_time"])) for d in done]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2, spans


def test_a_flooding_key_does_not_starve_another(
    start_service: Callable[..., InProcessService],
) -> None:
    # Everything is queued before any of it runs; polling 21 tasks needs more than 20 queries/s.
    server = start_service(workers=0, query_rps=1000)
    flooder = server.create_key("flooder", limited=True, rps=100)
    polite = server.create_key("polite", limited=True)
    flood = [
        post(server, flooder, body(f"wave {i}")).json()["output"]["task_id"] for i in range(20)
    ]
    late = post(server, polite, body("one boat")).json()["output"]["task_id"]
    server.start_worker()

    (mine,) = wait_all(server, polite, [late])
    assert mine["output"]["task_status"] == "SUCCEEDED"
    started = moment(mine["output"]["scheduled_time"])
    theirs = [server.query(t, flooder)["output"] for t in flood]
    before = [o for o in theirs if "scheduled_time" in o and moment(o["scheduled_time"]) < started]
    # Key B's one task went second, after A's first: not after A's 20.
    assert len(before) == 1, theirs
    wait_all(server, flooder, flood)


def die_holding(server: InProcessService, task_id: str) -> None:
    """What a worker killed mid-task leaves behind (test_durability.py kills real ones): the
    task claimed, RUNNING on a lease that nobody renews, and no result."""
    store = SqlStores.open(server.settings.resolved_database_url)
    try:
        task = store.queue.claim("killed-worker", [FLASH], server.settings.lease_seconds)
        assert task is not None and task.id == task_id
    finally:
        store.close()


def test_free_tier_only_stops_at_the_free_quota_and_others_pay_after_it(
    start_service: Callable[..., InProcessService],
) -> None:
    server = start_service(workers=0, max_attempts=1)
    free = server.create_key(
        "free", limited=True, free_tier_only=True, model=FLASH, free_quota=3, rps=50
    )
    paying = server.create_key("paying", limited=True, model=FLASH, free_quota=3, rps=50)

    # A task that fails (its worker dies, and no attempt is left) costs nothing.
    doomed = post(server, paying, {**SLOW, "model": FLASH}).json()["output"]["task_id"]
    die_holding(server, doomed)
    failed = server.wait(doomed, key=paying)["output"]
    assert (failed["task_status"], failed["code"]) == ("FAILED", "InternalError.WorkerLost")

    # Free tier: 2 + 1 images fit the quota of 3 (counting tasks not yet run), the next not.
    accepted = [post(server, free, body(n=2)), post(server, free, body(n=1))]
    assert [r.status_code for r in accepted] == [200, 200]
    refused = post(server, free, body(n=1))
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "AllocationQuota.FreeTierOnly"

    # The paying key gets 5 images: 3 free, then 2 at 0.14.
    paid = [post(server, paying, body(n=n)).json()["output"]["task_id"] for n in (4, 1)]
    server.start_worker()
    free_ids = [r.json()["output"]["task_id"] for r in accepted]
    results = wait_all(server, free, free_ids) + wait_all(server, paying, paid)
    assert [r["usage"]["image_count"] for r in results] == [2, 1, 4, 1]
    # With its free images used, the free-tier key is still refused; paying goes on.
    assert post(server, free, body()).json()["code"] == "AllocationQuota.FreeTierOnly"

    usage = admin(server, "GET", "/usage", params={"model": FLASH})
    assert usage.status_code == 200, usage.text
    rows = {r["key_name"]: r for r in usage.json()["usage"]}
    f, p = rows["free"], rows["paying"]
    assert (f["calls"], f["succeeded"], f["images"], f["free_images"]) == (2, 2, 3, 3)
    assert (f["amount"], f["free_images_left"]) == ("0.00", 0)
    assert (p["calls"], p["succeeded"], p["failed"], p["images"]) == (3, 2, 1, 5)
    assert (p["free_images"], p["free_images_left"], p["amount"]) == (3, 0, "0.28")
    assert p["success_rate"] == pytest.approx(2 / 3)

    # The same numbers split by day.
    by_day = admin(server, "GET", "/usage", params={"model": FLASH, "by": "day"})
    assert by_day.status_code == 200, by_day.text
    day_rows = {r["key_name"]: r for r in by_day.json()["usage"]}
    assert day_rows["paying"]["amount"] == "0.28" and day_rows["paying"]["images"] == 5
    assert day_rows["paying"]["period"] == datetime.now().strftime("%Y-%m-%d")


def test_a_monthly_spending_cap_stops_submissions_once_reached(
    start_service: Callable[..., InProcessService],
) -> None:
    server = start_service(transport="http")
    key = server.create_key(
        "capped", limited=True, model=FLASH, free_quota=0, monthly_cap="0.25", rps=50
    )
    first = [post(server, key, body()).json()["output"]["task_id"] for _ in range(2)]
    wait_all(server, key, first)  # 0.28 charged: the cap of 0.25 is reached
    refused = post(server, key, body())
    assert refused.status_code == 429
    assert refused.json()["code"] == "Throttling.AllocationQuota"
    lifted = admin(server, "PATCH", "/keys/capped", json={"monthly_cap": None})
    assert lifted.status_code == 200 and lifted.json()["key"]["monthly_cap"] is None
    assert post(server, key, body()).status_code == 200


def test_waiting_tasks_per_key_are_capped(
    start_service: Callable[..., InProcessService],
) -> None:
    server = start_service(workers=0)
    key = server.create_key("queue", limited=True, max_pending=2, rps=50)
    codes = [post(server, key, body()).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert post(server, key, body()).json()["code"] == "Throttling.AllocationQuota"


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_limits_hold_across_two_api_processes(
    backend: str, make_home: Callable[..., Home], start: Launcher, request: pytest.FixtureRequest
) -> None:
    settings = (
        {} if backend == "sqlite" else {"database_url": request.getfixturevalue("postgres_url")}
    )
    home = make_home(**settings)
    one = start(home=home, worker=False)
    two = start(home=home, worker=False, key=one.key)
    key = home.create_key("shared", limited=True)
    servers = iter([one, two] * 3)
    lock = threading.Lock()

    def submit() -> httpx.Response:
        with lock:
            server = next(servers)
        return post(server, key, body())

    codes = [r.status_code for r in together(6, submit)]
    # 6 submissions within well under a second: the shared bucket lets 2 through (plus at
    # most one token refilled while they ran).
    assert codes.count(200) in (2, 3) and codes.count(429) == 6 - codes.count(200), codes


def test_revoked_key_is_refused_at_once(http_server: InProcessService) -> None:
    server = http_server
    key = server.create_key("leaving")
    assert post(server, key, body()).status_code == 200
    revoked = admin(server, "POST", "/keys/leaving/revoke")
    assert revoked.status_code == 200 and revoked.json()["key"]["status"] == "revoked"
    refused = post(server, key, body())
    assert refused.status_code == 401 and refused.json()["code"] == "InvalidApiKey"
    with server.client(key) as c:
        assert c.get("/api/v1/tasks").status_code == 401
    listing = {k["name"]: k for k in admin(server, "GET", "/keys").json()["keys"]}
    assert listing["leaving"]["status"] == "revoked"
    shown = admin(server, "GET", "/keys/leaving").json()["key"]
    assert shown["status"] == "revoked" and shown["last_used_at"] is not None


def test_admin_api_takes_only_the_admin_credential(http_server: InProcessService) -> None:
    server = http_server
    with server.anonymous() as c:
        url = "/admin/v1/keys"
        with_key = c.get(url, headers={"Authorization": f"Bearer {server.key}"})
        assert with_key.status_code == 403 and with_key.json()["code"] == "AccessDenied"
        assert c.get(url).status_code == 401
        assert c.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401

        headers = {"Authorization": f"Bearer {server.admin_token}"}
        created = c.post(url, json={"name": "ops", "rps": 5}, headers=headers)
        assert created.status_code == 200, created.text
        secret, key_id = created.json()["secret"], created.json()["key"]["id"]
        assert post(server, secret, body()).status_code == 200
        changed = c.patch(f"{url}/{key_id}", json={"free_tier_only": True}, headers=headers)
        assert changed.json()["key"]["free_tier_only"] is True
        bad = c.patch(f"{url}/{key_id}", json={"rps": -1}, headers=headers)
        assert bad.status_code == 400 and bad.json()["code"] == "InvalidParameter"
        shown = c.get(f"{url}/{key_id}", headers=headers).json()["key"]
        assert shown["models"][FLASH]["rps"] == 5 and shown["models"]["wanx-v1"]["in_flight"] == 1
        revoked = c.post(f"{url}/{key_id}/revoke", headers=headers)
        assert revoked.json()["key"]["status"] == "revoked"
        assert post(server, secret, body()).status_code == 401
        assert c.get(f"{url}/nobody", headers=headers).status_code == 404
