"""Builds the long-lived objects of a process from one Settings."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from imagesynth.accounts.admin import AdminService, load_admin_token
from imagesynth.accounts.keys import KeyService
from imagesynth.accounts.limits import Admission, ServiceLimits
from imagesynth.api.context import Services
from imagesynth.catalog import Catalog
from imagesynth.config import Settings
from imagesynth.inputs.fetch import FetchPolicy, parse_networks
from imagesynth.inputs.uploads import UploadSigner
from imagesynth.prompts.factory import build_rewriter
from imagesynth.prompts.rewriter import PromptRewriter
from imagesynth.safety.terms import TermFilter, build_term_filter
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.signing import UrlSigner, load_or_create_secret
from imagesynth.tasks.maintenance import Maintenance
from imagesynth.tasks.prompt_stage import PromptStage
from imagesynth.tasks.service import TaskService
from imagesynth.tasks.store_sql import SqlStore


@dataclass
class Runtime:
    settings: Settings
    store: SqlStore
    catalog: Catalog
    blobs: LocalBlobStore

    @functools.cached_property
    def term_filter(self) -> TermFilter:
        return build_term_filter(self.settings)

    @functools.cached_property
    def rewriter(self) -> PromptRewriter:
        """prompt_extend's rewriter; its output passes the blocked-term filter too."""
        return build_rewriter(self.settings, screen=self.term_filter.screen)

    def prompt_stage(self) -> PromptStage:
        s = self.settings
        # A rewrite's whole budget (every attempt) and a margin, before another stage may
        # take the task over.
        lease = s.rewriter_timeout_seconds * s.rewriter_attempts + 30.0
        return PromptStage(
            self.store,
            self.catalog,
            self.rewriter,
            lease_seconds=lease,
            poll_seconds=s.worker_poll_seconds,
        )

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
        keys = KeyService(self.store)
        return Services(
            settings=s,
            catalog=self.catalog,
            tasks=TaskService(
                self.store,
                self.catalog,
                self.blobs,
                Admission(
                    self.store,
                    self.catalog,
                    ServiceLimits(max_pending=s.max_pending_per_key, query_rps=s.query_rps),
                ),
                s.max_attempts,
                terms=self.term_filter,
                rewrite_prompts=self.rewriter.available,
            ),
            keys=keys,
            blobs=self.blobs,
            signer=UrlSigner(secret, s.url_ttl_seconds),
            fetch_policy=FetchPolicy(
                max_bytes=s.fetch_max_bytes,
                timeout_seconds=s.fetch_timeout_seconds,
                allow=parse_networks(s.fetch_allow_networks),
            ),
            uploads=UploadSigner(secret, s.upload_ttl_seconds, s.fetch_max_bytes),
            admin=self.admin(keys),
        )

    def admin(self, keys: KeyService | None = None) -> AdminService:
        s = self.settings
        token = load_admin_token(
            s.admin_token.get_secret_value() if s.admin_token else None,
            self.admin_token_path,
        )
        return AdminService(self.store, self.catalog, keys or KeyService(self.store), token)

    @property
    def admin_token_path(self) -> Path:
        return self.settings.home_dir / "admin-token"

    def maintenance(self) -> Maintenance:
        s = self.settings
        return Maintenance(self.store, self.blobs, s.retention_seconds, s.upload_ttl_seconds)

    def worker(self, models: list[str] | None = None):  # type: ignore[no-untyped-def]
        # Imported here: only worker processes load the engine.
        from imagesynth.engine.worker import Worker
        from imagesynth.labels.labeler import Labeler
        from imagesynth.safety.images import build_image_classifier

        s = self.settings
        return Worker(
            self.store,
            self.blobs,
            self.catalog,
            s.resolved_demo_weights_dir,
            lease_seconds=s.lease_seconds,
            poll_seconds=s.worker_poll_seconds,
            models=models,
            labeler=Labeler.from_settings(s),
            classifier=build_image_classifier(s),
        )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
