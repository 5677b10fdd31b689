"""The prompt rewriter port: what prompt_extend calls, and the rewriters that need no model.

A rewriter turns a user's prompt into a richer one before it reaches a GPU worker. It never
raises to its caller: any failure (timeout, bad reply, output that fails validation) gives back
the original prompt with `rewritten=False` and a note saying why, and is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from imagesynth.errors import ImageSynthError

log = logging.getLogger("imagesynth.prompts")


class RewriterConfigError(ImageSynthError):
    """The prompt rewriter is misconfigured."""


@dataclass(frozen=True)
class Rewrite:
    """The prompt to generate from (`actual_prompt`), whether a rewriter changed it, and why
    not (or what it had to cut) in `note`."""

    text: str
    rewritten: bool
    note: str | None = None


class PromptRewriter(Protocol):
    """Rewrites prompts for prompt_extend. Implementations are thread-safe and never raise."""

    @property
    def available(self) -> bool:
        """False when no rewriter is configured (prompt_extend then keeps the prompt)."""
        ...

    def describe(self) -> str:
        """One line for the startup log and `models list`."""
        ...

    def rewrite(self, prompt: str, *, model: str, max_chars: int) -> Rewrite:
        """The rewritten prompt for image model `model` (a catalog name or a family), at most
        `max_chars` characters, in the prompt's language, with quoted text kept verbatim."""
        ...

    def close(self) -> None:
        """Release connections or weights; the rewriter is not used afterwards."""
        ...


def guarded(rewrite: Callable[..., Rewrite], prompt: str, *, model: str, max_chars: int) -> Rewrite:
    """rewrite(prompt, ...), or the original prompt if it raises: a rewriter's bug must not
    fail the task."""
    try:
        return rewrite(prompt, model=model, max_chars=max_chars)
    except Exception as exc:
        log.exception("prompt rewriter failed")
        return fallback(prompt, f"rewriter error: {type(exc).__name__}")


def fallback(prompt: str, note: str) -> Rewrite:
    """The original prompt, with a log line saying why it was not rewritten."""
    # The prompt itself stays out of the log: it is the user's data.
    log.warning(
        "prompt rewrite skipped, using the original prompt (%d chars): %s", len(prompt), note
    )
    return Rewrite(text=prompt, rewritten=False, note=note)


class NoRewriter:
    """prompt_extend with no rewriter configured: the prompt goes through unchanged."""

    available = False

    def describe(self) -> str:
        return (
            "prompt_extend unavailable: no prompt rewriter configured "
            "(set IMAGESYNTH_REWRITER_BASE_URL or IMAGESYNTH_REWRITER_PATH)"
        )

    def rewrite(self, prompt: str, *, model: str, max_chars: int) -> Rewrite:
        return Rewrite(text=prompt, rewritten=False, note="no prompt rewriter configured")

    def close(self) -> None:
        pass


Screen = Callable[[str], str | None]
"""Looks at a rewritten prompt; returns why it must not be used, or None."""


class ScreenedRewriter:
    """A rewriter whose output is screened (e.g. by the blocked-term filter): the prompt was
    accepted, so a rewrite that would not have been is dropped for the original."""

    def __init__(self, inner: PromptRewriter, screen: Screen) -> None:
        self.inner = inner
        self.screen = screen

    @property
    def available(self) -> bool:
        return self.inner.available

    def describe(self) -> str:
        return self.inner.describe()

    def rewrite(self, prompt: str, *, model: str, max_chars: int) -> Rewrite:
        result = self.inner.rewrite(prompt, model=model, max_chars=max_chars)
        if not result.rewritten:
            return result
        try:
            reason = self.screen(result.text)
        except Exception:  # the screen is ours too, but a rewrite must never fail a task
            log.exception("prompt rewrite screen failed")
            reason = "the rewrite could not be screened"
        return fallback(prompt, f"rewrite rejected: {reason}") if reason else result

    def load(self) -> None:
        """Load the inner rewriter's model now, where it has one."""
        load = getattr(self.inner, "load", None)
        if load is not None:
            load()

    def close(self) -> None:
        self.inner.close()
