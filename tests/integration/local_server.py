"""The API in this process: uvicorn in a thread on a free port, over the real stores, for tests
about HTTP behaviour that need the service's objects at hand (no worker runs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from imagesynth.accounts.settings import ALL_MODELS, KeySettings, ModelOverrides
from imagesynth.api.app import create_app
from imagesynth.api.context import Services
from imagesynth.config import Settings
from imagesynth.runtime import Runtime
from tests.integration.conftest import Home
from tests.integration.inprocess import IsolatedSettings, uvicorn_thread


@dataclass
class LocalApi:
    url: str
    runtime: Runtime
    services: Services
    key: str

    @property
    def files_dir(self) -> Path:
        return self.runtime.settings.blobs_dir

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )


def api_home(path: Path, **settings: str) -> Home:
    """A home for an API-only `imagesynth serve --no-worker` subprocess: no demo weights, as
    no worker runs there; keyword arguments become IMAGESYNTH_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESYNTH_", "DASHSCOPE_"))}
    env.update({"IMAGESYNTH_HOME": str(path), "HF_HUB_OFFLINE": "1"})
    env.update({f"IMAGESYNTH_{k.upper()}": v for k, v in settings.items()})
    return Home(path, env, IsolatedSettings(home=path, **settings))


@contextmanager
def local_api(home: Path, database_url: str | None = None, **settings: Any) -> Iterator[LocalApi]:
    """The API on `home` (and `database_url`, default SQLite there), with one API key whose
    limits are out of the way."""
    rt = Runtime.open(Settings(home=home, database_url=database_url, **settings))
    services = rt.services()
    generous = KeySettings(
        max_pending=10_000, models={ALL_MODELS: ModelOverrides(rps=1000, in_flight=100)}
    )
    _, secret = services.keys.create("test", generous)
    try:
        with uvicorn_thread(create_app(services)) as url:
            yield LocalApi(url, rt, services, secret)
    finally:
        rt.stores.close()
