"""The composition root: builds the long-lived objects of a process from one Settings.

Every concrete store, engine and front door is chosen here and handed to the layers below as
the port they see (docs/architecture.md). Which process runs what:
- `imagesynth serve --no-worker` (an API process): the HTTP app (with a remote prompt guard),
  maintenance, and the prompt stage when the rewriter is a remote endpoint. It never imports
  torch, diffusers or transformers: the worker, the engines, a local LM rewriter and a local
  guard model are built only in workers.
- `imagesynth worker`, and the in-process worker of `imagesynth serve`: the worker (with a
  local prompt guard), the image classifier, maintenance, and the prompt stage when the
  rewriter is a local LM.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imagesynth.accounts.admin import AdminService, load_admin_token
from imagesynth.accounts.keys import KeyService
from imagesynth.accounts.limits import Admission, ServiceLimits
from imagesynth.api.context import Services
from imagesynth.api.webhook_body import query_reply_renderer
from imagesynth.catalog import Catalog, CatalogError
from imagesynth.config import Settings
from imagesynth.db import SqlStores
from imagesynth.inputs.fetch import FetchPolicy, IPNetwork, parse_networks
from imagesynth.inputs.reference import ReferenceDecoder
from imagesynth.inputs.uploads import UploadSigner
from imagesynth.logs import log_handler
from imagesynth.prompts.factory import build_rewriter, rewriter_kind
from imagesynth.prompts.rewriter import PromptRewriter
from imagesynth.safety.guard import Guard
from imagesynth.safety.guard_factory import build_guard, guard_kind, guard_runs_at_submit
from imagesynth.safety.terms import TermFilter, build_term_filter
from imagesynth.storage.blobs import BlobStore
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.signing import UrlSigner, load_or_create_secret
from imagesynth.tasks.maintenance import Maintenance
from imagesynth.tasks.metrics import Metrics
from imagesynth.tasks.prompt_stage import PromptStage
from imagesynth.tasks.service import TaskService
from imagesynth.tasks.webhook_sender import WebhookSender
from imagesynth.tasks.webhooks import WebhookAdmin
from imagesynth.weights.resolve import WeightsChoice, resolve_catalog

if TYPE_CHECKING:
    from imagesynth.worker.worker import Worker


@dataclass
class Runtime:
    settings: Settings
    stores: SqlStores
    catalog: Catalog
    blobs: BlobStore
    secret: bytes  # signs /files URLs and upload policies (each with a key derived from it)
    signer: UrlSigner
    # What each model runs here: weights = "auto" resolved when the process started
    # (weights/resolve.py), the same way in API processes and workers.
    weights: dict[str, WeightsChoice] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        secret = (
            settings.url_secret.get_secret_value().encode()
            if settings.url_secret
            else load_or_create_secret(settings.home_dir / "secret")
        )
        signer = UrlSigner(secret, settings.url_ttl_seconds)
        blobs = open_blobs(settings, signer)  # first: a wrong bucket stops startup at once
        catalog, weights = resolve_catalog(
            Catalog.load(settings.resolved_catalog), settings.weights_dirs
        )
        return cls(
            settings=settings,
            stores=SqlStores.open(settings.resolved_database_url),
            catalog=catalog,
            blobs=blobs,
            secret=secret,
            signer=signer,
            weights=weights,
        )

    def describe_weights(self, models: list[str] | None = None) -> list[str]:
        """The startup log's lines on what each model runs (and how to make it real)."""
        return [c.describe() for name, c in self.weights.items() if not models or name in models]

    # -- prompt safety --------------------------------------------------------------------

    @functools.cached_property
    def term_filter(self) -> TermFilter:
        return build_term_filter(self.settings)

    def guard(self, *, worker: bool) -> Guard | None:
        """The prompt guard of a process (with a worker or API-only), or None: a remote
        endpoint screens at submit (API processes), a local model in the workers before
        generation, which load torch anyway, so that an API process never does."""
        if guard_runs_at_submit(self.settings) == worker:
            return None
        return self._guard

    @functools.cached_property
    def _guard(self) -> Guard | None:
        return build_guard(self.settings)

    def describe_guard(self, *, worker: bool) -> str:
        """The startup log's word on the prompt guard in this process."""
        guard = self.guard(worker=worker)
        if guard is not None:
            return guard.model.describe()
        kind = guard_kind(self.settings)
        if kind == "local":
            return (
                "prompt guard: the local guard model runs in worker processes "
                "(`imagesynth worker`), never in an API-only process"
            )
        if kind != "none":
            return "prompt guard: screens prompts at submit, in the API processes"
        return "prompt guard: none (set IMAGESYNTH_GUARD_BASE_URL or IMAGESYNTH_GUARD_PATH)"

    # -- prompt_extend --------------------------------------------------------------------

    @property
    def rewriter_kind(self) -> str:
        """ "openai", "local" or "none" (prompts/factory.py), without building the rewriter."""
        return rewriter_kind(self.settings)

    def prompt_stage_runs_here(self, *, api: bool, worker: bool) -> bool:
        """Whether a process that serves the API and/or runs a worker runs the prompt stage:
        a remote rewriter's stage runs in API processes; a local LM's in worker processes,
        which load torch anyway, so that an API-only process never does. `serve` with its
        in-process worker is both, and runs either."""
        kind = self.rewriter_kind
        return (kind == "openai" and api) or (kind == "local" and worker)

    @functools.cached_property
    def rewriter(self) -> PromptRewriter:
        """prompt_extend's rewriter; its output passes the blocked-term filter too. Build it
        only where the prompt stage runs (a local LM is loaded by its stage)."""
        return build_rewriter(self.settings, screen=self.term_filter.screen)

    def prompt_stage(self) -> PromptStage:
        s = self.settings
        # A rewrite's whole budget (every attempt) and a margin, before another stage may
        # take the task over.
        lease = s.rewriter_timeout_seconds * s.rewriter_attempts + 30.0
        return PromptStage(
            self.stores.prompts,
            self.catalog,
            self.rewriter,
            lease_seconds=lease,
            poll_seconds=s.worker_poll_seconds,
            events=self.stores.events,
        )

    # -- the API --------------------------------------------------------------------------

    def services(self) -> Services:
        s = self.settings
        keys = KeyService(self.stores.keys)
        return Services(
            settings=s,
            catalog=self.catalog,
            tasks=TaskService(
                self.stores.tasks,
                self.catalog,
                self.blobs,
                Admission(
                    self.stores.buckets,
                    self.catalog,
                    ServiceLimits(max_pending=s.max_pending_per_key, query_rps=s.query_rps),
                ),
                s.max_attempts,
                term_filter=self.term_filter,
                guard=self.guard(worker=False),
                # Tasks wait for the prompt stage wherever it runs (an API process or a
                # worker): only the configuration says whether there is one.
                rewrite_prompts=self.rewriter_kind != "none",
                references=ReferenceDecoder(s.max_reference_decodes),
                callback_allow=self.allow_networks,
            ),
            keys=keys,
            blobs=self.blobs,
            signer=self.signer,
            fetch_policy=FetchPolicy(
                max_bytes=s.fetch_max_bytes,
                timeout_seconds=s.fetch_timeout_seconds,
                allow=self.allow_networks,
            ),
            uploads=UploadSigner(self.secret, s.upload_ttl_seconds, s.fetch_max_bytes),
            admin=self.admin(keys),
            state=self.stores.workers,
            metrics=self.api_metrics,
            events=self.stores.events,
            webhooks=self.webhook_admin(keys),
        )

    @functools.cached_property
    def allow_networks(self) -> tuple[IPNetwork, ...]:
        """Private networks that reference fetches and webhook deliveries may reach."""
        return parse_networks(self.settings.fetch_allow_networks)

    def webhook_admin(self, keys: KeyService | None = None) -> WebhookAdmin:
        return WebhookAdmin(
            self.stores.webhooks, keys or KeyService(self.stores.keys), self.allow_networks
        )

    def webhook_sender(self, base_url: str) -> WebhookSender:
        """The outbox's sender for an API process; result links in the bodies start with
        IMAGESYNTH_PUBLIC_URL, or `base_url` (where this process listens) without it."""
        s = self.settings
        return WebhookSender(
            self.stores.webhooks,
            self.stores.tasks,
            query_reply_renderer(
                self.catalog, self.blobs, s.public_url or base_url, s.url_ttl_seconds
            ),
            FetchPolicy(
                max_bytes=64 * 1024,  # of the receiver's answer, kept for the log
                timeout_seconds=s.webhook_timeout_seconds,
                allow=self.allow_networks,
            ),
            retry_seconds=s.webhook_retry_seconds,
            retry_max_seconds=s.webhook_retry_max_seconds,
            give_up_seconds=s.webhook_give_up_seconds,
            poll_seconds=s.webhook_poll_seconds,
            concurrency=s.webhook_concurrency,
            events=self.stores.events,
        )

    @functools.cached_property
    def metrics(self) -> Metrics:
        """The process's registry: `serve`'s API and in-process worker share it."""
        return Metrics()

    @property
    def api_metrics(self) -> Metrics:
        """The registry with what the database holds, read at scrape time (the same window
        as /ready: one lease)."""
        self.metrics.watch(self.stores.workers, self.settings.lease_seconds)
        return self.metrics

    def admin(self, keys: KeyService | None = None) -> AdminService:
        s = self.settings
        token = load_admin_token(
            s.admin_token.get_secret_value() if s.admin_token else None,
            self.admin_token_path,
        )
        return AdminService(
            self.stores.ledger, self.catalog, keys or KeyService(self.stores.keys), token
        )

    @property
    def admin_token_path(self) -> Path:
        return self.settings.home_dir / "admin-token"

    # -- background work ------------------------------------------------------------------

    def maintenance(self) -> Maintenance:
        s = self.settings
        return Maintenance(
            self.stores.queue,
            self.stores.tasks,
            self.blobs,
            s.retention_seconds,
            s.upload_ttl_seconds,
            webhooks=self.stores.webhooks,
        )

    def worker(self, models: list[str] | None = None, device: str | None = None) -> Worker:
        """A worker on this runtime's stores; `device`, if given, overrides every model's."""
        # Imported here: only worker processes load the engines.
        from imagesynth.labels.labeler import Labeler
        from imagesynth.safety.images import build_image_classifier
        from imagesynth.worker.worker import Worker

        s = self.settings
        return Worker(
            self.stores.queue,
            self.blobs,
            with_device(self.catalog, device) if device else self.catalog,
            s.resolved_demo_weights_dir,
            lease_seconds=s.lease_seconds,
            poll_seconds=s.worker_poll_seconds,
            models=models,
            labeler=Labeler.from_settings(s),
            classifier=build_image_classifier(s),
            guard=self.guard(worker=True),
            events=self.stores.events,
            postprocess_threads=s.worker_postprocess_threads,
            postprocess_queue=s.worker_postprocess_queue,
            presence=self.stores.workers,
            metrics=self.worker_metrics,
            memory_budget=s.memory_budget,
        )

    @functools.cached_property
    def worker_metrics(self) -> Metrics:
        """The registry with the worker's own collectors, once per process however many
        workers it runs."""
        from imagesynth.worker.telemetry import CudaMemory

        self.metrics.add(CudaMemory())
        return self.metrics


def open_blobs(settings: Settings, signer: UrlSigner) -> BlobStore:
    """The blob store IMAGESYNTH_STORAGE_URL names (the local disk when unset); an S3 bucket
    is checked once here, so a wrong one stops startup rather than the first task."""
    if settings.storage_url is None:
        return LocalBlobStore(settings.blobs_dir, signer)
    # Imported here: boto3 is loaded only by deployments that store in S3.
    from imagesynth.storage.s3 import MAX_PRESIGN_SECONDS, S3BlobStore

    if settings.s3_urls == "presigned" and settings.url_ttl_seconds > MAX_PRESIGN_SECONDS:
        logging.getLogger(__name__).warning(
            "IMAGESYNTH_URL_TTL_SECONDS=%d is longer than S3 presigned URLs last: result "
            "links will expire after 7 days (IMAGESYNTH_S3_URLS=proxy keeps the full TTL)",
            settings.url_ttl_seconds,
        )
    return S3BlobStore.open(settings.storage_url, urls=settings.s3_urls, signer=signer)


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root logger at `level`, writing `log_format` lines ("text" or "json") to stderr."""
    logging.basicConfig(level=level.upper(), handlers=[log_handler(log_format)])
    # botocore says at INFO where it found credentials and the endpoint, for every client;
    # its warnings still show, and IMAGESYNTH_LOG_LEVEL=DEBUG shows it all.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("botocore").setLevel(logging.WARNING)


def with_device(catalog: Catalog, device: str) -> Catalog:
    """The catalog with every model's `device` set to `device` (`imagesynth worker --device
    cuda:1`: one worker process per GPU on one shared catalog file)."""
    # The one catalog rule about devices (catalog.py _check_levers), checked again here: the
    # override comes after the catalog was validated.
    offloaded = [name for name, s in catalog.models.items() if s.offload != "none"]
    if device == "cpu" and offloaded:
        raise CatalogError(
            f"--device cpu: {', '.join(offloaded)} offload onto an accelerator; serve the "
            "others with --model"
        )
    models = {name: dataclasses.replace(s, device=device) for name, s in catalog.models.items()}
    return Catalog(models, catalog.source, catalog.styles, catalog.billing)
