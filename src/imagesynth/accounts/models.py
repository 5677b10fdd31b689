"""The account domain: API keys, the terms a task is accepted under, and the usage ledger."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagesynth.accounts.settings import KeySettings
from imagesynth.domain import TaskStatus


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None
    settings: KeySettings = field(default_factory=KeySettings)


@dataclass(frozen=True)
class TaskTerms:
    """The limits and prices a task was accepted under, fixed at submission."""

    in_flight: int = 2  # this key's tasks of this model RUNNING at once
    price_micros: int = 0  # per successful image
    free_quota: int = 0  # the key's free images for this model
    free_until: float = 0.0  # epoch seconds: free images count only until then

    def free_left(self, used: int, now: float, reserved: int = 0) -> int:
        """Free images still to be had at `now`, with `used` already used and `reserved`
        promised to unfinished tasks."""
        if now > self.free_until:
            return 0
        return max(0, self.free_quota - used - reserved)


@dataclass(frozen=True)
class KeyStanding:
    """Where a key stands when a task of one model is submitted (read under the key's lock)."""

    pending: int  # the key's tasks waiting, all models
    free_used: int  # free images already used, this model
    reserved: int  # images asked for by the key's unfinished tasks, this model
    month_charged_micros: int  # charged since the start of the month, all models


@dataclass(frozen=True)
class LedgerEntry:
    """One finished task in the usage ledger (kept after the task itself expires)."""

    task_id: str
    api_key_id: str
    model: str
    status: TaskStatus
    created_at: float
    finished_at: float
    images: int
    free_images: int
    amount_micros: int
