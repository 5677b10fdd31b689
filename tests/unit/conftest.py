"""Store fixtures: every store test runs once per backend, SQLite on a temporary file and
PostgreSQL in a fresh schema when IMAGESYNTH_TEST_POSTGRES_DSN (a postgresql:// URL) is set."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagesynth.db import SqlStores


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'imagesynth.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def make_store(store_url: str) -> Iterator[Callable[[], SqlStores]]:
    """Independent SqlStores objects on the same database, like separate processes."""
    stores: list[SqlStores] = []

    def make() -> SqlStores:
        store = SqlStores.open(store_url)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[[], SqlStores]) -> SqlStores:
    return make_store()
