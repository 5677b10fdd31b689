"""Every change a client can make to tasks: submit, read, list, cancel. Routes call these."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from imagesynth.accounts.limits import Admission, month_start
from imagesynth.accounts.models import ApiKey
from imagesynth.catalog import Catalog
from imagesynth.domain import GenerationParams, TaskStatus
from imagesynth.errors import DataInspectionFailed, UnsupportedOperation
from imagesynth.inputs.fetch import IPNetwork
from imagesynth.inputs.reference import ReferenceDecoder
from imagesynth.safety import audit
from imagesynth.safety.audit import PromptField
from imagesynth.safety.guard import Guard
from imagesynth.safety.terms import TermFilter
from imagesynth.storage.blobs import BlobStore
from imagesynth.tasks.models import Task, TaskFilter
from imagesynth.tasks.ports import TaskStore
from imagesynth.tasks.webhooks import check_callback_url


class TaskService:
    def __init__(
        self,
        store: TaskStore,
        catalog: Catalog,
        blobs: BlobStore,
        admission: Admission,
        max_attempts: int,
        *,
        term_filter: TermFilter | None = None,
        guard: Guard | None = None,
        rewrite_prompts: bool = False,
        references: ReferenceDecoder | None = None,
        callback_allow: Sequence[IPNetwork] = (),
    ) -> None:
        """term_filter: the blocked-term filter every prompt passes before it is queued.
        guard: a remote guard model asked about every prompt that passed the terms (a local
        one runs in the workers instead: it needs torch).
        rewrite_prompts: whether a prompt rewriter runs (the prompt stage), so that tasks
        asking for prompt_extend wait for it. references: decodes reference images, a
        bounded number at a time (default 2). callback_allow: private networks a
        submission's callback URL may point into (IMAGESYNTH_FETCH_ALLOW_NETWORKS)."""
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.admission = admission
        self.max_attempts = max_attempts
        self.term_filter = term_filter
        self.guard = guard
        self.rewrite_prompts = rewrite_prompts
        self.references = references or ReferenceDecoder(2)
        self.callback_allow = tuple(callback_allow)

    def submit(
        self,
        key: ApiKey,
        model: str | None,
        fields: dict[str, Any],
        *,
        request_id: str,
        workspace: str | None = None,
        reference: Callable[[], bytes] | None = None,
        callback_url: str | None = None,
    ) -> Task:
        """Check the key's rate, validate against the model's rules and queue the task
        (PENDING) if the key's quotas allow it.

        `reference` loads the bytes of the request's reference image; it runs only once the
        parameters passed validation, and its image is checked and stored with the task.
        `callback_url` is sent the task's end, signed (docs/webhooks.md): 400
        InvalidParameter unless it is http(s) on a public address."""
        spec = self.catalog.get(model)
        self.admission.take_submission(key, spec)
        params = spec.validate(**fields)
        if callback_url is not None:
            callback_url = check_callback_url(callback_url, self.callback_allow)
        self._screen(params, request_id)
        task_id = str(uuid.uuid4())
        if reference is not None and params.ref_mode is not None:
            ref_key = f"{task_id}/input/ref.png"
            self.blobs.put(ref_key, self.references.stored_png(reference()))
            params = dataclasses.replace(params, ref_image_key=ref_key)
        terms = self.admission.terms(key, spec)
        try:
            return self.store.insert_task(
                task_id=task_id,
                api_key_id=key.id,
                model=spec.name,
                params=params,
                request_id=request_id,
                workspace=workspace,
                max_attempts=self.max_attempts,
                terms=terms,
                admit=self.admission.admit(key, params, terms),
                month_start=month_start(time.time()),
                rewrite_prompt=self.rewrite_prompts and params.prompt_extend,
                callback_url=callback_url,
            )
        except BaseException:
            self.blobs.delete_prefix(task_id)  # the refused task's reference, if any
            raise

    def _screen(self, params: GenerationParams, request_id: str) -> None:
        """400 DataInspectionFailed for a blocked term in the prompt or negative prompt, then
        for a prompt the guard blocks. The guard sees the prompt only: negative prompts name
        what to steer away from ("gore, nude"), which a guard would call unsafe."""
        if self.term_filter is not None:
            checks: tuple[tuple[PromptField, str], ...] = (
                ("prompt", params.prompt),
                ("negative_prompt", params.negative_prompt),
            )
            for field, text in checks:
                if not text:
                    continue
                match = self.term_filter.check(text, negative=field == "negative_prompt")
                audit.prompt_checked(match, field=field, request_id=request_id)
                if match is not None:
                    raise DataInspectionFailed()
        if self.guard is not None and params.prompt:
            verdict, blocked = self.guard.check(params.prompt)
            audit.guard_checked(
                verdict, blocked=blocked, guard=self.guard.model.name, request_id=request_id
            )
            if blocked:
                raise DataInspectionFailed()

    def get(self, key: ApiKey, task_id: str) -> Task | None:
        """The task, or None if it never existed, expired, or belongs to another key."""
        self.admission.take_query(key)
        if not _may_name_a_task(task_id):
            return None
        return self.store.get_task(task_id, key.id)

    def list(
        self, key: ApiKey, flt: TaskFilter, page_no: int, page_size: int
    ) -> tuple[int, list[Task]]:
        self.admission.take_query(key)
        return self.store.list_tasks(key.id, flt, (page_no - 1) * page_size, page_size)

    def cancel(self, key: ApiKey, task_id: str) -> None:
        self.admission.take_query(key)
        # Another key's task and an unknown id get the same answer: ids are not disclosed.
        if not _may_name_a_task(task_id) or not self.store.cancel_pending(task_id, key.id):
            raise UnsupportedOperation()

    def abandon(self, task_id: str) -> TaskStatus | None:
        """The synchronous caller went away: don't leave its task running for nobody."""
        return self.store.request_cancel(task_id)


def _may_name_a_task(task_id: str) -> bool:
    """Whether an id could be a task's: ids are UUIDs, and one holding a NUL (which PostgreSQL
    text cannot even hold) is answered as unknown without asking the store."""
    return "\x00" not in task_id
