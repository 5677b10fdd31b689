"""Usage per key, model and hour or day: what `imagesynth usage` and the admin API report.

Finished tasks come from the usage ledger, which outlives the tasks themselves (they are
forgotten after 24 h); tasks still waiting or running come from the tasks table.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from imagesynth.accounts.limits import terms_for
from imagesynth.accounts.models import ApiKey
from imagesynth.accounts.money import from_micros
from imagesynth.accounts.ports import Ledger
from imagesynth.catalog import Catalog
from imagesynth.domain import TaskStatus

Granularity = Literal["hour", "day"]
PERIOD_FORMATS = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}


@dataclass
class UsageRow:
    key_id: str
    key_name: str
    model: str
    period: str | None  # local hour or day the tasks were submitted in; None: all of `since`
    calls: int = 0  # tasks accepted
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    in_progress: int = 0
    images: int = 0
    free_images: int = 0
    amount_micros: int = 0
    free_images_left: int = 0  # now, for the key and model (not per period)

    @property
    def success_rate(self) -> float | None:
        """Succeeded over finished tasks (None while none has finished)."""
        finished = self.succeeded + self.failed + self.canceled
        return self.succeeded / finished if finished else None

    def to_json(self, currency: str) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "key_name": self.key_name,
            "model": self.model,
            "period": self.period,
            "calls": self.calls,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "canceled": self.canceled,
            "in_progress": self.in_progress,
            "images": self.images,
            "free_images": self.free_images,
            "success_rate": self.success_rate,
            "free_images_left": self.free_images_left,
            "amount": str(from_micros(self.amount_micros)),
            "currency": currency,
        }


def _period(created_at: float, by: Granularity | None) -> str | None:
    return None if by is None else datetime.fromtimestamp(created_at).strftime(PERIOD_FORMATS[by])


def usage_report(
    ledger: Ledger,
    catalog: Catalog,
    keys: Iterable[ApiKey],
    *,
    key_id: str | None = None,
    model: str | None = None,
    since: float = 0.0,
    by: Granularity | None = None,
) -> list[UsageRow]:
    """One row per key, model and period with any task since `since`, oldest period first.

    `keys` are every key (for their names and free quota); `key_id` limits the report to one."""
    rows: dict[tuple[str, str, str | None], UsageRow] = {}
    by_id = {k.id: k for k in keys}

    def row(key_id: str, model_name: str, created_at: float) -> UsageRow:
        at = (key_id, model_name, _period(created_at, by))
        if at not in rows:
            rows[at] = UsageRow(key_id, by_id[key_id].name, model_name, at[2])
        return rows[at]

    for entry in ledger.entries(key_id, model, since):
        r = row(entry.api_key_id, entry.model, entry.created_at)
        r.calls += 1
        r.images += entry.images
        r.free_images += entry.free_images
        r.amount_micros += entry.amount_micros
        if entry.status == TaskStatus.SUCCEEDED:
            r.succeeded += 1
        elif entry.status == TaskStatus.FAILED:
            r.failed += 1
        else:
            r.canceled += 1
    for owner, model_name, created_at in ledger.unfinished(key_id, model, since):
        r = row(owner, model_name, created_at)
        r.calls += 1
        r.in_progress += 1

    # Free images left belong to a key and model, whatever the period: one lookup each.
    now = time.time()
    left: dict[tuple[str, str], int] = {}
    for r in rows.values():
        spec = catalog.models.get(r.model)
        if spec is None:
            continue
        if (r.key_id, r.model) not in left:
            terms = terms_for(by_id[r.key_id], spec, catalog.billing)
            used = ledger.free_images_used(r.key_id, r.model)
            left[r.key_id, r.model] = terms.free_left(used, now)
        r.free_images_left = left[r.key_id, r.model]
    return sorted(rows.values(), key=lambda r: (r.period or "", r.key_name, r.key_id, r.model))
