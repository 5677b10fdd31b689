"""The sender's pure parts (tasks/webhook_sender.py, tasks/webhooks.py): signatures the
`standardwebhooks` library verifies, the envelope, the backoff schedule and the URL policy."""

from __future__ import annotations

import json
import random

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from imagesynth.domain import TaskStatus
from imagesynth.errors import InvalidParameter
from imagesynth.inputs.fetch import parse_networks
from imagesynth.tasks.models import Task
from imagesynth.tasks.webhook_sender import backoff, event_body, signed_headers
from imagesynth.tasks.webhooks import check_callback_url, new_secret, parse_events
from tests.unit.test_store import PARAMS


def test_signed_headers_verify_with_the_library_and_a_changed_byte_does_not() -> None:
    secret = new_secret()
    body = '{"type":"task.succeeded","data":{"x":"猫"}}'
    headers = dict(signed_headers("msg_1", secret, body))
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body.encode(), headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("猫", "犬").encode(), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body.encode(), headers)


def test_the_envelope_carries_the_event_the_end_time_and_the_reply() -> None:
    task = Task(
        id="t1",
        api_key_id="k",
        model="wanx-v1",
        params=PARAMS,
        status=TaskStatus.FAILED,
        request_id="r",
        finished_at=1_700_000_000.25,
    )
    envelope = json.loads(event_body("task.failed", task, {"output": {"task_id": "t1"}}))
    assert envelope == {
        "type": "task.failed",
        "timestamp": "2023-11-14T22:13:20.250Z",
        "data": {"output": {"task_id": "t1"}},
    }


def test_backoff_doubles_with_jitter_up_to_the_longest_delay() -> None:
    rng = random.Random(1)
    for attempt, nominal in ((1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (500, 3600)):
        for _ in range(20):
            assert 0.75 * nominal <= backoff(attempt, 5, 3600, rng) <= 1.25 * nominal


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://127.0.0.1:1/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/",
        "http://0.0.0.0/",
        "file:///etc/passwd",
        "http://user:pw@8.8.8.8/",
        "https://" + "a" * 2050,
    ],
)
def test_callback_urls_off_the_public_internet_are_refused(url: str) -> None:
    with pytest.raises(InvalidParameter, match=r"^callback_url: "):
        check_callback_url(url, ())


def test_the_operator_may_allow_private_networks() -> None:
    allow = parse_networks("127.0.0.0/8")
    assert check_callback_url("http://127.0.0.1:9/hook", allow) == "http://127.0.0.1:9/hook"
    with pytest.raises(InvalidParameter):
        check_callback_url("http://10.0.0.1/hook", allow)
    assert check_callback_url("https://8.8.8.8/hook", ()) == "https://8.8.8.8/hook"


def test_event_filters() -> None:
    assert parse_events(None) is None and parse_events([]) is None
    assert parse_events(["task.canceled", "task.failed"]) == ("task.failed", "task.canceled")
    with pytest.raises(InvalidParameter, match="unknown event"):
        parse_events(["task.started"])
