"""`imagesynth worker --device` (the catalog override) and IMAGESYNTH_LOG_FORMAT=json."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from imagesynth.catalog import Catalog, CatalogError
from imagesynth.config import Settings
from imagesynth.runtime import with_device

_LOG_SCRIPT = """
import logging
from imagesynth.config import Settings
from imagesynth.runtime import configure_logging
s = Settings()
configure_logging(s.log_level, s.log_format)
log = logging.getLogger("imagesynth.test")
log.info("hello %s", "world")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("it broke")
"""


def test_device_overrides_every_model() -> None:
    catalog = Catalog.load(Settings().resolved_catalog)
    moved = with_device(catalog, "cuda:1")
    assert {spec.device for spec in moved.models.values()} == {"cuda:1"}
    assert moved.models.keys() == catalog.models.keys()
    # Everything else as it was; the original untouched.
    name = next(iter(catalog.models))
    assert moved.get(name).weights == catalog.get(name).weights
    assert catalog.get(name).device != "cuda:1"


def test_device_cpu_is_refused_for_offloaded_models() -> None:
    catalog = Catalog.load(Settings().resolved_catalog)
    name = next(iter(catalog.models))
    offloaded = Catalog(
        {name: dataclasses.replace(catalog.get(name), offload="model")}, catalog.source
    )
    with pytest.raises(CatalogError, match=name):
        with_device(offloaded, "cpu")
    assert with_device(offloaded, "cuda:0").get(name).device == "cuda:0"


def run_logging(log_format: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESYNTH_")}
    env["IMAGESYNTH_LOG_FORMAT"] = log_format
    done = subprocess.run(
        [sys.executable, "-c", _LOG_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stderr.splitlines()


def test_json_logs_are_one_object_per_line() -> None:
    lines = run_logging("json")
    records = [json.loads(line) for line in lines]  # every line parses: tracebacks included
    assert len(records) == 2
    hello, broke = records
    assert hello["level"] == "INFO"
    assert hello["logger"] == "imagesynth.test"
    assert hello["message"] == "hello world"
    assert hello["time"].endswith("+00:00")
    assert "exc_info" not in hello
    assert broke["level"] == "ERROR"
    assert "ZeroDivisionError" in broke["exc_info"]


def test_text_logs_stay_the_default() -> None:
    lines = run_logging("text")
    assert " INFO imagesynth.test: hello world" in lines[0]
    assert lines[-1].startswith("ZeroDivisionError")
