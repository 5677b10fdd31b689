"""The task domain: what a client asked for, and where its task stands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagesynth.accounts.models import TaskTerms
from imagesynth.domain import GenerationParams, TaskStatus


@dataclass(frozen=True)
class ImageResult:
    """One image slot of a task: a stored file, or the error that took its place."""

    blob_key: str | None = None
    actual_prompt: str | None = None
    code: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageResult:
        # Results stored before 0.2 carry the prompt stage's flags, which belong to the task.
        data = {k: v for k, v in data.items() if k not in ("prompt_ready", "prompt_note")}
        return cls(**data)


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
    previews_made: int = 0  # preview images this attempt has stored (params.partial_images)
    results: list[ImageResult] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    seq: int = 0
    terms: TaskTerms = field(default_factory=TaskTerms)
    # The prompt the pipeline gets: the rewriter's output when prompt_extend ran, otherwise
    # None and the worker uses params.prompt.
    actual_prompt: str | None = None
    prompt_ready: bool = True  # False until the prompt stage has rewritten the prompt
    prompt_note: str | None = None  # why the prompt was kept as given, when it was
    callback_url: str | None = None  # told of the task's end as well (docs/webhooks.md)

    @property
    def effective_prompt(self) -> str:
        return self.actual_prompt if self.actual_prompt is not None else self.params.prompt

    def preview_key(self, index: int) -> str:
        """Where preview `index` (0-based) of the current attempt is stored (the worker
        writes it; the API's streams read it)."""
        return f"{self.id}/{self.attempts}/preview-{index}.jpg"

    @property
    def queue_wait(self) -> float | None:
        """Seconds from its submit to its first start (both the database's clock); None
        before it started."""
        if self.started_at is None:
            return None
        return max(self.started_at - self.created_at, 0.0)


@dataclass(frozen=True)
class TaskFilter:
    """A list query; times are epoch seconds, both ends inclusive."""

    start: float
    end: float
    model: str | None = None
    status: TaskStatus | None = None
    task_id: str | None = None
    workspace: str | None = None
