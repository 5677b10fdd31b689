"""Past one machine: PostgreSQL and S3 shared, nothing else. Two API processes and two
workers, each with its own IMAGESYNTH_HOME (no shared disk but the demo weights, a read-only
build artefact), and the official SDK through both APIs."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import httpx
import psycopg
from dashscope import ImageSynthesis

from tests.integration.conftest import Home, Launcher, Server, sdk_at
from tests.integration.test_durability import SLOW, running_with_progress
from tests.s3_server import S3Server

SECRET = "topology-test-secret-shared-by-the-api-processes"


def tampered(url: str) -> str:
    """The presigned URL with one character of its signature changed."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    signature = query["X-Amz-Signature"]
    query["X-Amz-Signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_two_apis_and_two_workers_on_postgres_and_s3(
    postgres_url: str,  # first: its schema is dropped after everything using it has stopped
    s3_env: S3Server,
    start: Launcher,
    make_home: Callable[..., Home],
) -> None:
    bucket = s3_env.new_bucket()

    def machine() -> Home:
        home = make_home(
            database_url=postgres_url,
            storage_url=f"s3://{bucket}/imagesynth",
            url_secret=SECRET,
            retention_seconds="8",
        )
        home.env.update(s3_env.env)
        return home

    first_home = machine()
    key = first_home.create_key("topology")
    apis: list[Server] = [
        start(home=first_home, worker=False, key=key),
        start(home=machine(), worker=False, key=key),
    ]
    workers = [start.worker(machine()), start.worker(machine())]

    for i, api in enumerate(apis):
        with sdk_at(f"{api.url}/api/v1"):
            rsp = ImageSynthesis.call(
                api_key=key, model="wan2.2-t2i-flash", prompt=f"via api {i}", n=1, size="768*512"
            )
        assert rsp.status_code == 200 and rsp.output.task_status == "SUCCEEDED", rsp
        url = rsp.output.results[0].url
        assert url.startswith(f"{s3_env.endpoint}/{bucket}/imagesynth/"), url
        assert api.fetch_png(url).size == (768, 512)
        assert httpx.get(tampered(url)).status_code == 403  # the store checks its signature

    # A worker killed mid-task: the other finishes it, once.
    slow = apis[0].submit(SLOW, key=key)
    apis[1].wait(slow, until=running_with_progress, key=key)
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT worker_id FROM tasks WHERE id = %s", (slow,)).fetchone()
    assert row is not None
    (owner,) = [w for w in workers if f":{w.popen.pid}:" in row[0]]
    owner.kill()
    done = apis[1].wait(slow, timeout=240, key=key)
    assert done["output"]["task_status"] == "SUCCEEDED", done
    (result,) = done["output"]["results"]
    assert f"/imagesynth/{slow}/2/{slow}-0.png" in result["url"]
    assert apis[0].fetch_png(result["url"]).size == (1440, 1440)
    (usage,) = first_home.usage(model=SLOW["model"])
    assert (usage["calls"], usage["succeeded"], usage["images"]) == (1, 1, 1), usage

    # Retention (8 s here) deletes the task and its objects; every process runs it.
    def objects() -> list[str]:
        client = boto3.client("s3")  # s3_env set the AWS_* variables it reads
        listing = client.list_objects_v2(Bucket=bucket, Prefix=f"imagesynth/{slow}/")
        return [o["Key"] for o in listing.get("Contents", [])]

    apis[0].wait(slow, until=lambda r: r["output"]["task_status"] == "UNKNOWN", key=key)
    assert objects() == []
