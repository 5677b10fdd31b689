"""The content-safety audit trail: one log line per decision, on logger `imagesynth.audit`.

Each line says which task (or request, for a prompt rejected before a task exists), which
stage (prompt | image), the decision, for prompts the layer (terms | guard) and the category,
and the rule that matched, the guard's verdict, or the score; the same fields
travel in the record's `audit` attribute for structured log handlers. It never carries the
image, nor the checked text beyond the rule that matched. Passes are logged at INFO, blocks
at WARNING; route the logger to its own file to keep the trail.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

from imagesynth.safety.guard import GuardVerdict
from imagesynth.safety.images import Verdict
from imagesynth.safety.terms import Match

audit = logging.getLogger("imagesynth.audit")

Stage = Literal["prompt", "image"]
Decision = Literal["pass", "block"]
PromptField = Literal["prompt", "negative_prompt"]
Value = str | int | float | bool | None


def _format(value: Value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, str) and value and all(c.isalnum() or c in "-_.:/" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def record(stage: Stage, decision: Decision, **fields: Value) -> None:
    """Log one audit line: `audit stage=... decision=... key=value ...` (None fields left out)."""
    kept = {k: v for k, v in fields.items() if v is not None}
    line = " ".join(
        [f"stage={stage}", f"decision={decision}", *(f"{k}={_format(v)}" for k, v in kept.items())]
    )
    level = logging.WARNING if decision == "block" else logging.INFO
    audit.log(
        level, "audit %s", line, extra={"audit": {"stage": stage, "decision": decision, **kept}}
    )


def prompt_checked(
    match: Match | None,
    *,
    field: PromptField,
    task_id: str | None = None,
    request_id: str | None = None,
) -> None:
    """Audit a term-filter decision on one field of a request."""
    record(
        "prompt",
        "pass" if match is None else "block",
        task_id=task_id,
        request_id=request_id,
        field=field,
        layer="terms",
        category=None if match is None else match.category,
        rule=None if match is None else match.rule,
        list=None if match is None else match.source,
    )


def guard_checked(
    verdict: GuardVerdict,
    *,
    blocked: bool,
    guard: str,
    field: PromptField = "prompt",
    task_id: str | None = None,
    request_id: str | None = None,
) -> None:
    """Audit a guard decision: its verdict and categories, or the error that kept it from
    giving one (the fail policy then decided), and how long it took."""
    record(
        "prompt",
        "block" if blocked else "pass",
        task_id=task_id,
        request_id=request_id,
        field=field,
        layer="guard",
        category=",".join(verdict.categories) or None,
        guard=guard,
        safety=verdict.safety,
        error=verdict.error,
        ms=round(verdict.elapsed * 1000),
    )


def image_checked(
    verdict: Verdict,
    *,
    task_id: str,
    index: int,
    classifier: str,
    threshold: float,
) -> None:
    """Audit the classifier's decision on image `index` of a task."""
    record(
        "image",
        "block" if verdict.flagged else "pass",
        task_id=task_id,
        index=index,
        classifier=classifier,
        label=verdict.label,
        score=verdict.score,
        threshold=threshold,
    )
