"""build_guard(settings): the prompt guard the settings ask for, and where it runs.

Kept apart from safety/guard.py because it reaches the local guard's module, which imports
torch: the API process imports guard.py (the submit-time screen), never this.
"""

from __future__ import annotations

from imagesynth.config import Settings
from imagesynth.safety.guard import Guard, GuardConfigError, GuardPolicy, OpenAIGuard, PromptGuard
from imagesynth.safety.terms import parse_categories


def guard_kind(settings: Settings) -> str:
    """ "chat", "moderations", "local" or "none": IMAGESYNTH_GUARD, else inferred from which of
    IMAGESYNTH_GUARD_BASE_URL / IMAGESYNTH_GUARD_PATH is set."""
    if settings.guard is not None:
        return settings.guard
    if settings.guard_base_url and settings.guard_path:
        raise GuardConfigError(
            "both IMAGESYNTH_GUARD_BASE_URL and IMAGESYNTH_GUARD_PATH are set: choose one "
            "with IMAGESYNTH_GUARD=chat, moderations or local"
        )
    if settings.guard_base_url:
        return "chat"
    return "local" if settings.guard_path else "none"


def guard_runs_at_submit(settings: Settings) -> bool:
    """Whether the guard screens prompts at submit time (a remote endpoint, in the API
    process) rather than in the workers before generation (a local model, which needs torch)."""
    return guard_kind(settings) in ("chat", "moderations")


def build_guard(settings: Settings) -> Guard | None:
    """The configured guard and its policy, or None. Raises GuardConfigError at startup for an
    incomplete configuration. Build it only where it runs (see guard_runs_at_submit)."""
    kind = guard_kind(settings)
    model: PromptGuard
    if kind in ("chat", "moderations"):
        if not settings.guard_base_url:
            raise GuardConfigError(f"IMAGESYNTH_GUARD={kind} needs IMAGESYNTH_GUARD_BASE_URL")
        key = settings.guard_api_key
        model = OpenAIGuard(
            settings.guard_base_url,
            settings.guard_model,
            api="chat" if kind == "chat" else "moderations",
            api_key=key.get_secret_value() if key else None,
            timeout=settings.guard_timeout_seconds,
        )
    elif kind == "local":
        from imagesynth.safety.guard_local import LocalGuard

        path = settings.guard_path
        if path is None or not (path.expanduser() / "config.json").is_file():
            raise GuardConfigError(
                "IMAGESYNTH_GUARD=local needs IMAGESYNTH_GUARD_PATH, a folder with a "
                f"transformers guard model (config.json); got {path}"
            )
        model = LocalGuard(
            path, device=settings.guard_device, timeout=settings.guard_timeout_seconds
        )
    else:
        return None
    policy = GuardPolicy(
        fail_closed=settings.guard_fail == "closed",
        block_controversial=settings.guard_block_controversial,
        categories_off=parse_categories(settings.safety_categories_off),
    )
    return Guard(model, policy)
