"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.s3_server import S3Server

PG_DSN_ENV = "IMAGESYNTH_TEST_POSTGRES_DSN"

# The tests never see this machine's Hugging Face cache: weights a developer pulled there would
# turn the built-in catalog's demo models real (weights = "auto"). Subprocesses inherit it.
_HF_CACHE = tempfile.mkdtemp(prefix="imagesynth-test-hf-")
os.environ["HF_HUB_CACHE"] = _HF_CACHE
atexit.register(shutil.rmtree, _HF_CACHE, ignore_errors=True)
if "huggingface_hub.constants" in sys.modules:  # read at import: too late for the variable
    sys.modules["huggingface_hub.constants"].HF_HUB_CACHE = _HF_CACHE


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline demo weights, built once per test session (engine/diffusers/demo.py),
    with the network cut off: building them must never reach a model hub."""
    from imagesynth.engine.diffusers.demo import build_demo_weights

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("building the demo weights tried to open a connection")

    root = tmp_path_factory.mktemp("demo-weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        build_demo_weights(root)
    return root


PG_SKIP_REASON = f"{PG_DSN_ENV} not set: PostgreSQL tests skipped"


def _with_search_path(dsn: str, schema: str) -> str:
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A database URL for a fresh, empty PostgreSQL schema, dropped afterwards; skips the test
    when no server is configured.

    scripts/test.sh sets IMAGESYNTH_TEST_POSTGRES_DSN when a server answers (starting the local
    one if it can) and says so when none does; without it these tests skip, saying why."""
    dsn = os.environ.get(PG_DSN_ENV)
    if not dsn:
        pytest.skip(PG_SKIP_REASON)
    import psycopg

    schema = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _with_search_path(dsn, schema)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """fresh_postgres_schema() for one test."""
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (`weed mini`, tests/s3_server.py) for the session; skips the tests
    that need it, saying why, where it cannot start."""
    from tests.s3_server import weed_mini

    try:
        with weed_mini(tmp_path_factory.mktemp("s3")) as server:
            yield server
    except RuntimeError as exc:
        pytest.skip(f"no S3 server for the tests: {exc}")


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """s3_server, with the standard AWS_* variables (which boto3 reads) pointing at it."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    return s3_server
