"""The prompt stage (prompt_extend): rewrites prompts of queued tasks before any worker runs them.

Tasks submitted with prompt_extend, while a rewriter is configured, wait in the queue with
prompt_ready = 0; workers skip them. This stage leases one such task at a time per thread,
asks the rewriter (which never raises and has its own time budget), and records the prompt
the pipeline will get. It runs in the API processes for a remote rewriter and in the worker
processes for a local LM, so an API process never loads torch (runtime.py,
docs/architecture.md). A GPU worker is never held waiting for an LLM, and a stage that dies
mid-rewrite only delays the task until its lease runs out.
"""

from __future__ import annotations

import logging
import threading

from imagesynth.catalog import Catalog
from imagesynth.prompts.rewriter import PromptRewriter
from imagesynth.tasks.models import Task
from imagesynth.tasks.ports import PromptQueue, TaskEvents

log = logging.getLogger(__name__)


class PromptStage:
    def __init__(
        self,
        queue: PromptQueue,
        catalog: Catalog,
        rewriter: PromptRewriter,
        *,
        lease_seconds: float,
        poll_seconds: float,
        concurrency: int = 4,
        events: TaskEvents | None = None,
    ) -> None:
        """events: wake-ups when a task starts waiting for its rewrite (without: polling
        every `poll_seconds`)."""
        self.queue = queue
        self.catalog = catalog
        self.rewriter = rewriter
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.concurrency = concurrency
        self.events = events
        self._wake = threading.Condition()
        self._waiting = 0  # rewrites announced and not yet looked for

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        # A local LM loads here, before the first task, or that task's rewrite would spend
        # its time budget on loading and fall back.
        load = getattr(self.rewriter, "load", None)
        if load is not None:
            try:
                load()
            except Exception:
                log.exception("prompt rewriter failed to load; rewrites will fall back")
        threads = [
            threading.Thread(target=self.run, args=(stop,), name=f"prompt-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        return threads

    def run(self, stop: threading.Event) -> None:
        unsubscribe = self.events.on_rewrite(self._announced) if self.events else lambda: None
        try:
            while not stop.is_set():
                try:
                    busy = self.run_one()
                except Exception:
                    log.exception("prompt stage failed; retrying")
                    busy = False
                if not busy:
                    self._sleep(stop)
        finally:
            unsubscribe()

    def _announced(self, model: str) -> None:
        with self._wake:
            self._waiting += 1
            self._wake.notify()

    def _sleep(self, stop: threading.Event) -> None:
        """Until a rewrite is announced, or the poll interval (the fallback) has passed."""
        with self._wake:
            if self._waiting == 0:
                self._wake.wait(self.poll_seconds)
            self._waiting = max(0, self._waiting - 1)

    def run_one(self) -> bool:
        """Rewrite one waiting task's prompt; False when none was waiting."""
        task = self.queue.claim_prompt(self.lease_seconds)
        if task is None:
            return False
        self.rewrite(task)
        return True

    def rewrite(self, task: Task) -> None:
        spec = self.catalog.models.get(task.model)
        max_chars = spec.prompt_max_chars if spec else len(task.params.prompt)
        result = self.rewriter.rewrite(task.params.prompt, model=task.model, max_chars=max_chars)
        if result.note:
            log.info("task %s: prompt_extend note: %s", task.id, result.note)
        if not self.queue.set_actual_prompt(task.id, result.text, result.note):
            log.info("task %s: prompt already set by another stage", task.id)
