"""What a key may do: submission rate, tasks waiting, free quota, spending cap (spec §3-4).

Every check reads or writes the database, never one process's memory, so the limits hold when
several API processes share it. Rates are token buckets (ports.RateBuckets); the quota checks
run under the key's lock in the same transaction as the task's insert (the task store's
insert_task calls Admission.admit's check there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from imagesynth.accounts.models import ApiKey, KeyStanding, TaskTerms
from imagesynth.accounts.money import from_micros, to_micros
from imagesynth.accounts.ports import RateBuckets
from imagesynth.catalog import Billing, Catalog, ModelSpec
from imagesynth.domain import GenerationParams
from imagesynth.errors import AllocationQuotaExceeded, FreeTierOnly, RateQuotaExceeded, Throttled

DAY = 86_400.0


@dataclass(frozen=True)
class ServiceLimits:
    """Service-wide defaults that are not per model."""

    max_pending: int = 100  # tasks waiting per key
    query_rps: float = 20.0  # query, list and cancel requests per second per key


def terms_for(key: ApiKey, spec: ModelSpec, billing: Billing) -> TaskTerms:
    """The in-flight limit, price and free quota that apply to key's tasks of a model."""
    overrides = key.settings.for_model(spec.name)
    return TaskTerms(
        in_flight=overrides.in_flight or spec.in_flight,
        price_micros=to_micros(spec.price),
        free_quota=spec.free_quota if overrides.free_quota is None else overrides.free_quota,
        free_until=key.created_at + billing.free_quota_days * DAY,
    )


def submission_rps(key: ApiKey, spec: ModelSpec) -> float:
    """Submissions per second the key may make for the model: its override, or the catalog's."""
    return key.settings.for_model(spec.name).rps or spec.rps


def month_start(now: float) -> float:
    """The start of the calendar month (local time) that `now` falls in."""
    moment = datetime.fromtimestamp(now)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


class Admission:
    def __init__(self, buckets: RateBuckets, catalog: Catalog, limits: ServiceLimits) -> None:
        self.buckets = buckets
        self.catalog = catalog
        self.limits = limits

    def terms(self, key: ApiKey, spec: ModelSpec) -> TaskTerms:
        return terms_for(key, spec, self.catalog.billing)

    def take_submission(self, key: ApiKey, spec: ModelSpec) -> None:
        """One submission against the key's per-model rate; 429 RateQuota beyond it."""
        rps = submission_rps(key, spec)
        if not self.buckets.take_token(f"submit:{key.id}:{spec.name}", rps, max(1.0, rps)):
            raise RateQuotaExceeded(retry_after=1.0 / rps)

    def take_query(self, key: ApiKey) -> None:
        """One query, list or cancel request; 429 Throttling beyond the per-key rate."""
        rps = self.limits.query_rps
        if not self.buckets.take_token(f"query:{key.id}", rps, max(1.0, rps)):
            raise Throttled(retry_after=1.0 / rps)

    def admit(
        self, key: ApiKey, params: GenerationParams, terms: TaskTerms
    ) -> Callable[[KeyStanding], None]:
        """The check the task store's insert_task runs under the key's lock before queueing."""
        settings = key.settings
        max_pending = settings.max_pending or self.limits.max_pending

        def check(standing: KeyStanding) -> None:
            if standing.pending >= max_pending:
                raise AllocationQuotaExceeded(
                    f"Allocated quota exceeded: this key already has {standing.pending} tasks "
                    f"waiting (limit {max_pending})."
                )
            cap = settings.monthly_cap_micros
            if cap is not None and standing.month_charged_micros >= cap:
                raise AllocationQuotaExceeded(
                    "Allocated quota exceeded: this key's monthly spending cap of "
                    f"{from_micros(cap)} {self.catalog.billing.currency} is reached."
                )
            if settings.free_tier_only:
                left = terms.free_left(standing.free_used, time.time(), standing.reserved)
                if params.n > left:
                    raise FreeTierOnly(
                        f"Free allocated quota exceeded: {left} free images left for this "
                        f"model, {params.n} requested, and this key is limited to the free tier."
                    )

        return check
