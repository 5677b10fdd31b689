"""The task domain: what a client asked for, and where its task stands."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from imagesynth.accounts.settings import KeySettings


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)


@dataclass(frozen=True)
class GenerationParams:
    """Validated generation parameters: every default already filled in."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    n: int
    seed: int
    steps: int
    guidance: float
    prompt_extend: bool
    watermark: bool
    style: str | None = None
    # wanx-v1 reference image: the stored (validated, PNG) copy, how close to stay to it
    # (0..1, 1 = closest) and whether to follow its content (repaint) or its style (refonly).
    ref_image_key: str | None = None
    ref_strength: float | None = None
    ref_mode: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationParams:
        return cls(**data)


@dataclass(frozen=True)
class ImageResult:
    """One image slot of a task: a stored file, or the error that took its place."""

    blob_key: str | None = None
    actual_prompt: str | None = None
    prompt_ready: bool = True  # False until the prompt stage has rewritten the prompt
    prompt_note: str | None = None  # why the prompt was kept as given, when it was
    code: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageResult:
        return cls(**data)


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


@dataclass(frozen=True)
class Task:
    id: str
    api_key_id: str
    model: str
    params: GenerationParams
    status: TaskStatus
    request_id: str
    workspace: str | None = None
    attempts: int = 0
    max_attempts: int = 3
    worker_id: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    progress_step: int = 0
    progress_total: int = 0
    results: list[ImageResult] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    seq: int = 0
    terms: TaskTerms = field(default_factory=TaskTerms)
    # The prompt the pipeline gets: the rewriter's output when prompt_extend ran (issue 5),
    # otherwise None and the worker uses params.prompt.
    actual_prompt: str | None = None
    prompt_ready: bool = True  # False until the prompt stage has rewritten the prompt
    prompt_note: str | None = None  # why the prompt was kept as given, when it was

    @property
    def effective_prompt(self) -> str:
        return self.actual_prompt if self.actual_prompt is not None else self.params.prompt


@dataclass(frozen=True)
class TaskFilter:
    """A list query; times are epoch seconds, both ends inclusive."""

    start: float
    end: float
    model: str | None = None
    status: TaskStatus | None = None
    task_id: str | None = None
    workspace: str | None = None


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None
    settings: KeySettings = field(default_factory=KeySettings)
