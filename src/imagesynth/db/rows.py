"""Rows of the tasks and api_keys tables as domain objects."""

from __future__ import annotations

import json
from typing import Any

from imagesynth.accounts.models import ApiKey, TaskTerms
from imagesynth.accounts.settings import KeySettings
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.tasks.models import ImageResult, Task

TASK_COLUMNS = (
    "id, seq, api_key_id, model, params, status, request_id, workspace, attempts, max_attempts, "
    "worker_id, lease_until, cancel_requested, created_at, started_at, finished_at, "
    "progress_step, progress_total, results, error_code, error_message, "
    "n, in_flight, price_micros, free_quota, free_until, actual_prompt, prompt_ready, prompt_note, "
    "previews_made, callback_url"
)
KEY_COLUMNS = "id, name, prefix, created_at, last_used_at, revoked_at, settings"
# What a statement that ends tasks returns for the usage ledger (ledger.record_finished).
LEDGER_SOURCE = (
    "id, api_key_id, model, status, created_at, finished_at, price_micros, free_quota, free_until"
)


def row_to_task(row: Any) -> Task:
    return Task(
        id=row["id"],
        seq=row["seq"],
        api_key_id=row["api_key_id"],
        model=row["model"],
        params=GenerationParams.from_json(json.loads(row["params"])),
        status=TaskStatus(row["status"]),
        request_id=row["request_id"],
        workspace=row["workspace"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        worker_id=row["worker_id"],
        lease_until=row["lease_until"],
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress_step=row["progress_step"],
        progress_total=row["progress_total"],
        previews_made=row["previews_made"],
        results=[ImageResult.from_json(r) for r in json.loads(row["results"] or "[]")],
        error_code=row["error_code"],
        error_message=row["error_message"],
        terms=TaskTerms(
            in_flight=row["in_flight"],
            price_micros=row["price_micros"],
            free_quota=row["free_quota"],
            free_until=row["free_until"],
        ),
        actual_prompt=row["actual_prompt"],
        prompt_ready=bool(row["prompt_ready"]),
        prompt_note=row["prompt_note"],
        callback_url=row["callback_url"],
    )


def row_to_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        settings=KeySettings.loads(row["settings"]),
    )
