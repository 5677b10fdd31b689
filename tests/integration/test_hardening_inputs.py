"""Hostile input gets a 4xx in the DashScope error shape, never a 500, and the keep-alive
connection it came on still answers (issue 10): deep nesting, huge integers, non-ASCII
digits, out-of-range admin settings, NUL characters, protocol-level errors and an unexpected
exception. On SQLite and on PostgreSQL, through real HTTP on one raw socket."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.live_app import ADMIN_TOKEN, LiveApp, live_app_on, read_reply

SUBMIT = "/api/v1/services/aigc/text2image/image-synthesis"
MULTIMODAL = "/api/v1/services/aigc/multimodal-generation/generation"
DEEP = 50_000


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApp]:
    """One server per database for the whole module: these tests only read or refuse."""
    with live_app_on(request.param, tmp_path_factory.mktemp("edge-home")) as served:
        yield served


class Connection:
    """One keep-alive HTTP/1.1 connection, spoken byte by byte."""

    def __init__(self, app: LiveApp, token: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", app.port), timeout=20)
        self.token = token or app.key

    def send(
        self, method: str, path: str, body: str | bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        data = body.encode() if isinstance(body, str) else (body or b"")
        lines = [
            f"{method} {path} HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: Bearer {self.token}",
            f"Content-Length: {len(data)}",
            *(["X-DashScope-Async: enable"] if path == SUBMIT else []),
            *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        return parse(read_reply(self.sock))

    def close(self) -> None:
        self.sock.close()


def parse(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_error(
    reply: tuple[int, dict[str, str], bytes], status: int, code: str, *words: str
) -> dict[str, Any]:
    got, headers, raw = reply
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), headers
    body = json.loads(raw)
    assert set(body) == {"request_id", "code", "message"}, body
    assert body["code"] == code, body
    uuid.UUID(body["request_id"])
    for word in words:
        assert word in body["message"], body
    return dict(body)


def assert_still_answers(conn: Connection) -> None:
    status, headers, body = conn.send("GET", "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}, body
    assert headers.get("connection") != "close"


def submit_body(prompt: Any = "a cat", **parameters: Any) -> dict[str, Any]:
    return {"model": "wanx-v1", "input": {"prompt": prompt}, "parameters": parameters}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# 1. Nesting deep enough for RecursionError -------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "admin"),
    [
        ("POST", SUBMIT, nested(DEEP), False),
        ("POST", SUBMIT, '{"model":"wanx-v1","input":{"prompt":' + nested(DEEP) + "}}", False),
        ("POST", SUBMIT, '{"x":' * DEEP + "1" + "}" * DEEP, False),
        (
            "POST",
            MULTIMODAL,
            '{"model":"qwen-image","input":{"messages":[{"role":"user","content":'
            + nested(100_000)
            + "}]}}",
            False,
        ),
        ("POST", "/admin/v1/keys", '{"name":"n","rps":' + nested(5_000) + "}", True),
        ("PATCH", "/admin/v1/keys/edge", '{"model":' + nested(DEEP) + "}", True),
    ],
    ids=["body", "prompt", "objects", "multimodal-content", "admin-create", "admin-change"],
)
def test_deep_nesting_is_400(app: LiveApp, method: str, path: str, body: str, admin: bool) -> None:
    conn = Connection(app, ADMIN_TOKEN if admin else None)
    try:
        reply = conn.send(method, path, body)
        assert_error(reply, 400, "InvalidParameter", "deeper than 32")
        assert_still_answers(conn)
    finally:
        conn.close()


def test_brackets_inside_strings_do_not_count(app: LiveApp) -> None:
    conn = Connection(app)
    try:
        # Past the depth limit only as text: a prompt may say anything.
        reply = conn.send(
            "POST",
            SUBMIT,
            json.dumps(submit_body("[" * 100 + "{" * 100)),
            X_DashScope_Async="enable",
        )
        assert reply[0] == 200, reply[2]
    finally:
        conn.close()


# 2. Integers with thousands of digits ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", SUBMIT, submit_body(seed="HUGE"), "parameters.seed"),
        ("POST", SUBMIT, submit_body(n="HUGE"), "parameters.n"),
        ("POST", SUBMIT, submit_body(guidance="HUGE"), "parameters.guidance"),
        ("POST", SUBMIT, {**submit_body(), "unknown": ["HUGE"]}, "unknown[0]"),
        ("PATCH", "/admin/v1/keys/edge", {"max_pending": "HUGE"}, "max_pending"),
    ],
)
def test_huge_integer_in_body_is_400_naming_the_field(
    app: LiveApp, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    text = json.dumps(body).replace('"HUGE"', "9" * 5000)
    conn = Connection(app, ADMIN_TOKEN if path.startswith("/admin") else None)
    try:
        reply = conn.send(method, path, text)
        assert_error(reply, 400, "InvalidParameter", f"{field}: a number of 5000 characters")
        assert_still_answers(conn)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/tasks?page_no=" + "9" * 5000, "page_no"),
        ("/api/v1/tasks?page_size=" + "1" * 4301, "page_size"),
    ],
)
def test_huge_integer_in_query_is_400_naming_the_field(app: LiveApp, path: str, field: str) -> None:
    conn = Connection(app)
    try:
        assert_error(conn.send("GET", path), 400, "InvalidParameter", field)
        assert_still_answers(conn)
    finally:
        conn.close()


def test_huge_expires_on_a_file_link_is_refused(app: LiveApp) -> None:
    conn = Connection(app)
    try:
        reply = conn.send("GET", "/files/x/0.png?Expires=" + "9" * 5000 + "&Signature=ab")
        assert_error(reply, 403, "AccessDenied")
        assert_still_answers(conn)
    finally:
        conn.close()


# 3. Digits that str.isdigit() takes and int() refuses --------------------------------------


@pytest.mark.parametrize(
    ("path", "field", "admin"),
    [
        ("/api/v1/tasks?page_no=%C2%B2", "page_no", False),  # ²
        ("/api/v1/tasks?page_size=%D9%A1", "page_size", False),  # Arabic-Indic 1: int() reads it
        ("/admin/v1/usage?since=%C2%B2d", "since", True),
        ("/admin/v1/usage?since=%EF%BC%97h", "since", True),  # full-width 7
    ],
)
def test_unicode_digits_are_400(app: LiveApp, path: str, field: str, admin: bool) -> None:
    conn = Connection(app, ADMIN_TOKEN if admin else None)
    try:
        assert_error(conn.send("GET", path), 400, "InvalidParameter", field)
        assert_still_answers(conn)
    finally:
        conn.close()


# 4. Admin values too large for the database, float or Decimal ------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ('{"rps": 1' + "0" * 400 + "}", ("rps",)),
        ('{"rps": 1e400}', ("rps",)),
        ('{"rps": 10001}', ("rps", "(0, 10000]")),
        ('{"monthly_cap": "1e999999"}', ("monthly_cap", "[0, 1000000000]")),
        ('{"monthly_cap": 1e30}', ("monthly_cap",)),
        ('{"in_flight": 1e30}', ("in_flight", "[1, 10000]")),
        (f'{{"in_flight": {10**30}}}', ("in_flight",)),
        ('{"free_quota": 1e30}', ("free_quota", "[0, 1000000000]")),
        (f'{{"free_quota": {2**31}}}', ("free_quota",)),
        (f'{{"max_pending": {2**63}}}', ("max_pending", "[1, 1000000]")),
    ],
)
def test_out_of_range_admin_values_are_refused_when_set(
    app: LiveApp, change: str, words: tuple[str, ...]
) -> None:
    conn = Connection(app, ADMIN_TOKEN)
    try:
        assert_error(
            conn.send("PATCH", "/admin/v1/keys/edge", change), 400, "InvalidParameter", *words
        )
        assert_error(
            conn.send("POST", "/admin/v1/keys", '{"name": "big", ' + change[1:]),
            400,
            "InvalidParameter",
            *words,
        )
        assert_still_answers(conn)
    finally:
        conn.close()
    # Nothing was stored that could make a submit fail later.
    user = Connection(app)
    try:
        reply = user.send("POST", SUBMIT, json.dumps(submit_body()))
        assert reply[0] == 200, reply[2]
    finally:
        user.close()


def test_admin_values_at_the_documented_bounds_are_taken(app: LiveApp) -> None:
    conn = Connection(app, ADMIN_TOKEN)
    try:
        name = f"bounds-{uuid.uuid4().hex[:6]}"
        body = {
            "name": name,
            "rps": 10_000,
            "in_flight": 10_000,
            "free_quota": 1_000_000_000,
            "max_pending": 1_000_000,
            "monthly_cap": "1000000000",
        }
        status, _, raw = conn.send("POST", "/admin/v1/keys", json.dumps(body))
        assert status == 200, raw
        secret = json.loads(raw)["secret"]
    finally:
        conn.close()
    user = Connection(app, secret)
    try:
        reply = user.send("POST", SUBMIT, json.dumps(submit_body()))
        assert reply[0] == 200, reply[2]
    finally:
        user.close()


# 5. NUL characters in ids, filters and names -----------------------------------------------


def test_nul_in_a_task_id_reads_unknown(app: LiveApp) -> None:
    conn = Connection(app)
    try:
        status, _, raw = conn.send("GET", "/api/v1/tasks/a%00b")
        assert status == 200, raw
        assert json.loads(raw)["output"] == {"task_id": "a\x00b", "task_status": "UNKNOWN"}
        # Cancelling it answers as for any id this key has no PENDING task under.
        assert_error(conn.send("POST", "/api/v1/tasks/a%00b/cancel"), 400, "UnsupportedOperation")
        assert_still_answers(conn)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "word"),
    [
        ("GET", "/api/v1/tasks?task_id=a%00", None, 400, "InvalidParameter", "task_id"),
        ("GET", "/api/v1/tasks?model_name=wanx%00", None, 400, "InvalidParameter", "model_name"),
        (
            "POST",
            SUBMIT,
            json.dumps(submit_body("a\x00b")),
            400,
            "InvalidParameter",
            "input.prompt",
        ),
        (
            "POST",
            SUBMIT,
            json.dumps({**submit_body(), "model": "wanx-v1\x00"}),
            400,
            "InvalidParameter",
            "model",
        ),
        (
            "POST",
            SUBMIT,
            '{"model":"wanx-v1","input":{"prompt":"\\ud800"}}',
            400,
            "InvalidParameter",
            "input.prompt",
        ),
        ("GET", "/admin/v1/keys/edge%00", None, 404, "NotFound", "No key"),
        ("PATCH", "/admin/v1/keys/a%00", '{"rps": 1}', 404, "NotFound", "No key"),
        ("POST", "/admin/v1/keys/a%00/revoke", None, 404, "NotFound", "No key"),
        ("GET", "/admin/v1/usage?key=edge%00", None, 400, "InvalidParameter", "key"),
        ("GET", "/admin/v1/usage?model=wanx%00", None, 400, "InvalidParameter", "model"),
        ("POST", "/admin/v1/keys", json.dumps({"name": "a\x00b"}), 400, "InvalidParameter", "name"),
        ("POST", "/admin/v1/keys", json.dumps({"name": "a\nb"}), 400, "InvalidParameter", "name"),
    ],
)
def test_nul_in_filters_and_names_is_refused(
    app: LiveApp, method: str, path: str, body: str | None, status: int, code: str, word: str
) -> None:
    conn = Connection(app, ADMIN_TOKEN if path.startswith("/admin") else None)
    try:
        assert_error(conn.send(method, path, body), status, code, word)
        assert_still_answers(conn)
    finally:
        conn.close()


def test_non_ascii_admin_credential_is_401(app: LiveApp) -> None:
    reply, sock = app.raw(
        b"GET /admin/v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    )
    try:
        assert_error(parse(reply), 401, "InvalidApiKey")
    finally:
        sock.close()


# 6. Protocol-level errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code", "word"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, "BadRequest", "header"),
        (
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999999999\r\n\r\n",
            400,
            "BadRequest",
            "Content-Length",
        ),
        (
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
            "BadRequest",
            "Content-Length",
        ),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 1_000_000 + b"\r\n\r\n",
            431,
            "BadRequest.TooLarge",
            "100 request headers of 16384 bytes",
        ),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(3000))
            + b"\r\n",
            431,
            "BadRequest.TooLarge",
            "100 request headers of 16384 bytes",
        ),
        (b"GET /health HTTP/9\r\n\r\n", 400, "BadRequest", "Invalid HTTP request"),
    ],
    ids=[
        "nul-header",
        "long-content-length",
        "duplicate-content-length",
        "1mb-header",
        "many-headers",
        "bad-version",
    ],
)
def test_protocol_errors_answer_in_the_error_shape(
    app: LiveApp, raw: bytes, status: int, code: str, word: str
) -> None:
    try:
        reply, sock = app.raw(raw)
    except ConnectionResetError:  # the server may close before reading all of a 1 MB header
        pytest.fail("connection reset before any reply")
    sock.close()
    assert_error(parse(reply), status, code, word)
    conn = Connection(app)  # that connection is closed, as HTTP requires; the server is not
    try:
        assert_still_answers(conn)
    finally:
        conn.close()


def test_a_20_digit_content_length_is_413(app: LiveApp) -> None:
    reply, sock = app.raw(
        f"POST {SUBMIT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app.key}\r\n"
        "Content-Length: 99999999999999999999\r\n\r\n{}".encode()
    )
    sock.close()
    assert_error(parse(reply), 413, "BadRequest.TooLarge")


# 7. An unexpected error: 500 InternalError, one log line, the connection kept --------------


def test_unexpected_error_is_500_and_keeps_the_connection(
    app: LiveApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(app.services.tasks, "get", broken)
    conn = Connection(app)
    try:
        with caplog.at_level(logging.INFO):
            body = assert_error(conn.send("GET", "/api/v1/tasks/some-id"), 500, "InternalError")
        assert "a bug" not in body["message"]
        lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert body["request_id"] in lines[0].getMessage()
        assert "RuntimeError: a bug over two lines" in lines[0].getMessage()
        assert_still_answers(conn)
        monkeypatch.undo()
        status, _, raw = conn.send("GET", "/api/v1/tasks/some-id")
        assert status == 200 and json.loads(raw)["output"]["task_status"] == "UNKNOWN"
    finally:
        conn.close()


def test_unexpected_error_is_logged_with_its_traceback_at_debug(
    app: LiveApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.services.tasks, "get", broken)
    conn = Connection(app)
    try:
        with caplog.at_level(logging.DEBUG, logger="imagesynth.api.errors"):
            assert_error(conn.send("GET", "/api/v1/tasks/some-id"), 500, "InternalError")
        (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert record.exc_info is not None
    finally:
        conn.close()


# 4, through the CLI: the same ranges, refused with a one-line error --------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (["--rps", "1e400"], "rps"),
        (["--rps", str(10**400)], "rps"),
        (["--in-flight", str(10**30)], "in_flight"),
        (["--free-quota", str(2**31)], "free_quota"),
        (["--max-pending", "0"], "max_pending"),
        (["--monthly-cap", "1e999999"], "monthly_cap"),
    ],
)
def test_cli_refuses_out_of_range_settings_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str], field: str
) -> None:
    from typer.testing import CliRunner

    from imagesynth.cli import app as cli

    monkeypatch.setenv("IMAGESYNTH_HOME", str(tmp_path))
    monkeypatch.setenv("IMAGESYNTH_INVISIBLE_WATERMARK", "false")
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "--name", "k"])
    assert created.exit_code == 0, created.output
    for command in (["keys", "set", "k", *options], ["keys", "create", "--name", "j", *options]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(f"error: {field} must be"), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
