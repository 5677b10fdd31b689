"""Builds the long-lived objects of a process from one Settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from imagesynth.api.context import Services
from imagesynth.auth import KeyService
from imagesynth.catalog import Catalog
from imagesynth.config import Settings
from imagesynth.inputs.fetch import FetchPolicy, parse_networks
from imagesynth.inputs.uploads import UploadSigner
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.signing import UrlSigner, load_or_create_secret
from imagesynth.tasks.maintenance import Maintenance
from imagesynth.tasks.service import TaskService
from imagesynth.tasks.store_sql import SqlStore


@dataclass
class Runtime:
    settings: Settings
    store: SqlStore
    catalog: Catalog
    blobs: LocalBlobStore

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        store = SqlStore(settings.resolved_database_url)
        store.init_schema()
        return cls(
            settings=settings,
            store=store,
            catalog=Catalog.load(settings.resolved_catalog),
            blobs=LocalBlobStore(settings.blobs_dir),
        )

    def services(self) -> Services:
        s = self.settings
        secret = (
            s.url_secret.get_secret_value().encode()
            if s.url_secret
            else load_or_create_secret(s.home_dir / "secret")
        )
        return Services(
            settings=s,
            catalog=self.catalog,
            tasks=TaskService(self.store, self.catalog, self.blobs, s.max_attempts),
            keys=KeyService(self.store),
            blobs=self.blobs,
            signer=UrlSigner(secret, s.url_ttl_seconds),
            fetch_policy=FetchPolicy(
                max_bytes=s.fetch_max_bytes,
                timeout_seconds=s.fetch_timeout_seconds,
                allow=parse_networks(s.fetch_allow_networks),
            ),
            uploads=UploadSigner(secret, s.upload_ttl_seconds, s.fetch_max_bytes),
        )

    def maintenance(self) -> Maintenance:
        s = self.settings
        return Maintenance(self.store, self.blobs, s.retention_seconds, s.upload_ttl_seconds)

    def worker(self, models: list[str] | None = None):  # type: ignore[no-untyped-def]
        # Imported here: only worker processes load the engine.
        from imagesynth.engine.worker import Worker

        s = self.settings
        return Worker(
            self.store,
            self.blobs,
            self.catalog,
            s.resolved_demo_weights_dir,
            lease_seconds=s.lease_seconds,
            poll_seconds=s.worker_poll_seconds,
            models=models,
        )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
