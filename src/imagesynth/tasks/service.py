"""Every change a client can make to tasks: submit, read, list, cancel. Routes call these."""

from __future__ import annotations

import uuid
from typing import Any

from imagesynth.catalog import Catalog
from imagesynth.errors import UnsupportedOperation
from imagesynth.tasks.models import ApiKey, Task, TaskFilter, TaskStatus
from imagesynth.tasks.store_sql import SqlStore


class TaskService:
    def __init__(self, store: SqlStore, catalog: Catalog, max_attempts: int) -> None:
        self.store = store
        self.catalog = catalog
        self.max_attempts = max_attempts

    def submit(
        self,
        key: ApiKey,
        model: str | None,
        fields: dict[str, Any],
        *,
        request_id: str,
        workspace: str | None = None,
    ) -> Task:
        """Validate against the model's rules and queue the task (PENDING)."""
        spec = self.catalog.get(model)
        params = spec.validate(**fields)
        return self.store.insert_task(
            task_id=str(uuid.uuid4()),
            api_key_id=key.id,
            model=spec.name,
            params=params,
            request_id=request_id,
            workspace=workspace,
            max_attempts=self.max_attempts,
        )

    def get(self, key: ApiKey, task_id: str) -> Task | None:
        """The task, or None if it never existed, expired, or belongs to another key."""
        return self.store.get_task(task_id, key.id)

    def list(
        self, key: ApiKey, flt: TaskFilter, page_no: int, page_size: int
    ) -> tuple[int, list[Task]]:
        return self.store.list_tasks(key.id, flt, (page_no - 1) * page_size, page_size)

    def cancel(self, key: ApiKey, task_id: str) -> None:
        # Another key's task and an unknown id get the same answer: ids are not disclosed.
        if not self.store.cancel_pending(task_id, key.id):
            raise UnsupportedOperation()

    def abandon(self, task_id: str) -> TaskStatus | None:
        """The synchronous caller went away: don't leave its task running for nobody."""
        return self.store.request_cancel(task_id)
