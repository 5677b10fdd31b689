"""Every change a client can make to tasks: submit, read, list, cancel. Routes call these."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from imagesynth.catalog import Catalog
from imagesynth.errors import UnsupportedOperation
from imagesynth.inputs.reference import decode_reference
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.png import encode_png
from imagesynth.tasks.models import ApiKey, Task, TaskFilter, TaskStatus
from imagesynth.tasks.store_sql import SqlStore


class TaskService:
    def __init__(
        self, store: SqlStore, catalog: Catalog, blobs: LocalBlobStore, max_attempts: int
    ) -> None:
        self.store = store
        self.blobs = blobs
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
        reference: Callable[[], bytes] | None = None,
    ) -> Task:
        """Validate against the model's rules and queue the task (PENDING).

        `reference` loads the bytes of the request's reference image; it runs only once the
        parameters passed validation, and its image is checked and stored with the task."""
        spec = self.catalog.get(model)
        params = spec.validate(**fields)
        task_id = str(uuid.uuid4())
        if reference is not None and params.ref_mode is not None:
            image = decode_reference(reference())
            ref_key = f"{task_id}/input/ref.png"
            self.blobs.put(ref_key, encode_png(image))
            params = dataclasses.replace(params, ref_image_key=ref_key)
        return self.store.insert_task(
            task_id=task_id,
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
