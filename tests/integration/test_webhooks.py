"""Signed webhooks against the real server over real HTTP (docs/webhooks.md): a receiver this
test starts gets each task's end, signed so that the `standardwebhooks` library verifies it;
deliveries survive a killed service; private callback URLs are refused at submit; failed
deliveries are listed by the admin API with their attempts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from dashscope import ImageSynthesis
from standardwebhooks import Webhook, WebhookVerificationError

from imagesynth.runtime import Runtime
from tests.integration.conftest import Home, Launcher, free_port, sdk_pointed_at
from tests.integration.inprocess import InProcessService
from tests.integration.webhook_receiver import receiver

QUICK: dict[str, Any] = {
    "model": "wanx2.1-t2i-turbo",
    "input": {"prompt": "a quick one"},
    "parameters": {"n": 1, "size": "512*512", "seed": 1},
}
# The test's receiver is on loopback: the operator setting lets deliveries reach it.
LOOPBACK = {"fetch_allow_networks": "127.0.0.0/8"}
CALLBACK_HEADER = "X-ImageSynth-Callback-URL"


def admin_get(service: InProcessService, path: str, **params: str) -> dict[str, Any]:
    with service.client(service.admin_token) as c:
        r = c.get(f"/admin/v1{path}", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def admin_post(service: InProcessService, path: str, body: dict[str, Any]) -> httpx.Response:
    with service.client(service.admin_token) as c:
        return c.post(f"/admin/v1{path}", json=body)


def wait_for_delivery(
    get: Callable[[], list[dict[str, Any]]], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        rows = get()
        if rows and done(rows[0]):
            return rows[0]
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_task_end_arrives_signed_for_the_endpoint_and_the_callback_url(
    start_service: Callable[..., InProcessService], request: pytest.FixtureRequest, db: str
) -> None:
    # On PostgreSQL the sender is woken through LISTEN/NOTIFY and claims with SKIP LOCKED.
    on = {"database_url": request.getfixturevalue("postgres_url")} if db == "postgresql" else {}
    service = start_service(transport="http", **LOOPBACK, **on)
    with receiver() as hooks, sdk_pointed_at(service):
        r = admin_post(service, "/keys/test/webhooks", {"url": hooks.url + "/endpoint"})
        assert r.status_code == 200, r.text
        endpoint_secret = r.json()["secret"]
        assert endpoint_secret.startswith("whsec_")
        callback_secret = admin_get(service, "/keys/test/webhook-secret")["secret"]

        # The official SDK passes the callback URL as parameters.callback_url.
        rsp = ImageSynthesis.call(
            api_key=service.key,
            model="wanx2.1-t2i-turbo",
            prompt="a quick one",
            n=1,
            size="512*512",
            callback_url=hooks.url + "/callback",
        )
        assert rsp.output.task_status == "SUCCEEDED", rsp
        task_id = rsp.output.task_id
        got = {r.path: r for r in hooks.wait_for(2)}
        assert set(got) == {"/hook/endpoint", "/hook/callback"}

        query = service.query(task_id)
        for path, secret in (
            ("/hook/endpoint", endpoint_secret),
            ("/hook/callback", callback_secret),
        ):
            delivery = got[path]
            event = Webhook(secret).verify(delivery.body, delivery.headers)
            assert event["type"] == "task.succeeded"
            # The body is the task's query reply, as GET /api/v1/tasks/{id} answers it.
            assert event["data"]["output"]["task_id"] == task_id
            assert event["data"]["output"]["task_status"] == "SUCCEEDED"
            assert event["data"]["usage"] == query["usage"]
            url = event["data"]["output"]["results"][0]["url"]
            assert service.fetch_png(url).size == (512, 512)
            assert delivery.headers["webhook-signature"].startswith("v1,")
            assert delivery.headers["webhook-id"].startswith("msg_")
            # A tampered body, or the other destination's secret, is refused by the library.
            tampered = delivery.body.replace(b"SUCCEEDED", b"FAILED")
            with pytest.raises(WebhookVerificationError):
                Webhook(secret).verify(tampered, delivery.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(callback_secret).verify(
                got["/hook/endpoint"].body, got["/hook/endpoint"].headers
            )

        # The admin API lists both as delivered, with their one attempt.
        rows = admin_get(service, "/webhooks/deliveries", task_id=task_id)["deliveries"]
        assert {(d["status"], d["attempts"], d["event"]) for d in rows} == {
            ("delivered", 1, "task.succeeded")
        }
        assert {d["id"] for d in rows} == {r.headers["webhook-id"] for r in got.values()}
        assert all(d["log"][0]["status_code"] == 204 for d in rows)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://127.0.0.1:1/",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "ftp://hooks.example.com/",
        "not a url",
    ],
)
def test_a_callback_url_to_a_private_address_is_refused_at_submit(
    start_service: Callable[..., InProcessService], url: str
) -> None:
    service = start_service(workers=0)
    body = {**QUICK, "parameters": {**QUICK["parameters"], "callback_url": url}}
    with service.client() as c:
        for kwargs in (
            {"json": body},
            {"json": QUICK, "headers": {CALLBACK_HEADER: url}},
        ):
            headers = {"X-DashScope-Async": "enable", **kwargs.pop("headers", {})}
            r = c.post(
                "/api/v1/services/aigc/text2image/image-synthesis", headers=headers, **kwargs
            )
            assert r.status_code == 400, r.text
            assert r.json()["code"] == "InvalidParameter"
            assert r.json()["message"].startswith("callback_url: ")
        assert service.tasks() == []  # nothing was queued
    # Nor may an endpoint be registered there.
    r = admin_post(service, "/keys/test/webhooks", {"url": url})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter", r.text


def test_failed_deliveries_are_listed_with_their_attempts(
    start_service: Callable[..., InProcessService],
) -> None:
    service = start_service(
        transport="http",
        webhook_retry_seconds=0.05,
        webhook_retry_max_seconds=0.1,
        webhook_give_up_seconds=1.2,  # room for 2+ attempts even on a loaded machine
        webhook_poll_seconds=0.05,
        **LOOPBACK,
    )
    with receiver(status=500) as hooks:
        failing = admin_post(service, "/keys/test/webhooks", {"url": hooks.url})
        assert failing.status_code == 200
        task_id = service.submit(QUICK)
        assert service.wait(task_id)["output"]["task_status"] == "SUCCEEDED"
        row = wait_for_delivery(
            lambda: admin_get(service, "/webhooks/deliveries", status="failed", task_id=task_id)[
                "deliveries"
            ],
            lambda d: d["status"] == "failed",
        )
    assert row["attempts"] >= 2 and row["last_error"] == "HTTP 500"
    assert [a["status_code"] for a in row["log"]] == [500] * row["attempts"]
    assert [a["attempt"] for a in row["log"]] == list(range(1, row["attempts"] + 1))
    # Every attempt carried the same webhook-id: the delivery's.
    assert {r.headers["webhook-id"] for r in hooks.received} == {row["id"]}
    assert len(hooks.received) == row["attempts"]


@contextmanager
def worker_thread(home: Home) -> Iterator[None]:
    """A worker on the home's state in a thread of the test process (as `imagesynth worker`
    would be), with no webhook sender of its own."""
    runtime = Runtime.open(home.settings)
    stop = threading.Event()
    thread = threading.Thread(target=runtime.worker().run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        runtime.stores.close()


def test_a_delivery_survives_a_killed_service_and_arrives_once_with_the_same_id(
    start: Launcher,
    make_home: Callable[..., Home],
    start_service: Callable[..., InProcessService],
) -> None:
    quick_retries = {
        "webhook_retry_seconds": "0.1",
        "webhook_retry_max_seconds": "0.3",
        "webhook_poll_seconds": "0.05",
    }
    home = make_home(**LOOPBACK, **quick_retries)
    port = free_port()  # nobody listens there yet: the receiver is down
    callback = f"http://127.0.0.1:{port}/hook"
    server = start(home, worker=False)  # the API process, whose sender will be killed
    with server.client() as c:
        r = c.post(
            "/api/v1/services/aigc/text2image/image-synthesis",
            json=QUICK,
            headers={"X-DashScope-Async": "enable", CALLBACK_HEADER: callback},
        )
    assert r.status_code == 200, r.text
    task_id = r.json()["output"]["task_id"]
    token = admin_token(home)
    with worker_thread(home):
        assert server.wait(task_id)["output"]["task_status"] == "SUCCEEDED"

    def deliveries() -> list[dict[str, Any]]:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
            return list(
                c.get("/admin/v1/webhooks/deliveries", params={"task_id": task_id}).json()[
                    "deliveries"
                ]
            )

    failing = wait_for_delivery(deliveries, lambda d: d["attempts"] >= 2)
    assert failing["status"] == "pending" and "refused" in failing["last_error"].lower()
    server.proc.kill()  # SIGKILL: the outbox is all that is left

    secret = home.cli("keys", "webhook", "secret", "test").stdout.strip()
    with receiver(port) as hooks:
        restarted = start_service(settings=home.settings, workers=0, transport="http")
        (got,) = hooks.wait_for(1)
        event = Webhook(secret).verify(got.body, got.headers)
        assert event["type"] == "task.succeeded"
        assert event["data"]["output"]["task_id"] == task_id
        assert got.headers["webhook-id"] == failing["id"]  # the same id as the failed attempts
        done = wait_for_delivery(
            lambda: admin_get(restarted, "/webhooks/deliveries", task_id=task_id)["deliveries"],
            lambda d: d["status"] == "delivered",
        )
        time.sleep(0.3)  # a second delivery would have come by now
        assert len(hooks.received) == 1
    assert done["id"] == failing["id"] and done["attempts"] > failing["attempts"]
    assert [a["status_code"] for a in done["log"]][-1] == 204
    assert all(a["status_code"] is None for a in done["log"][:-1])
    assert json.loads(got.body)["data"]["output"]["task_status"] == "SUCCEEDED"


def admin_token(home: Home) -> str:
    runtime = Runtime.open(home.settings)
    try:
        return runtime.admin().token
    finally:
        runtime.stores.close()
