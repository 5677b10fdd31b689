"""build_rewriter(settings): the prompt rewriter the settings ask for."""

from __future__ import annotations

from imagesynth.config import Settings
from imagesynth.prompts.rewriter import (
    NoRewriter,
    PromptRewriter,
    RewriterConfigError,
    Screen,
    ScreenedRewriter,
)


def rewriter_kind(settings: Settings) -> str:
    """The rewriter to build, "openai", "local" or "none": IMAGESYNTH_REWRITER, else inferred
    from which of IMAGESYNTH_REWRITER_BASE_URL / IMAGESYNTH_REWRITER_PATH is set."""
    if settings.rewriter is not None:
        return settings.rewriter
    if settings.rewriter_base_url and settings.rewriter_path:
        raise RewriterConfigError(
            "both IMAGESYNTH_REWRITER_BASE_URL and IMAGESYNTH_REWRITER_PATH are set: "
            "choose one with IMAGESYNTH_REWRITER=openai or local"
        )
    if settings.rewriter_base_url:
        return "openai"
    return "local" if settings.rewriter_path else "none"


def build_rewriter(settings: Settings, *, screen: Screen | None = None) -> PromptRewriter:
    """The configured rewriter (NoRewriter when none is). Raises RewriterConfigError at
    startup for an incomplete configuration; the rewriter it returns never raises.

    `screen`, when given, vets every rewrite (e.g. the blocked-term filter), and a rewrite it
    objects to is replaced by the original prompt."""
    kind = rewriter_kind(settings)
    rewriter: PromptRewriter
    if kind == "openai":
        from imagesynth.prompts.openai_compatible import OpenAICompatibleRewriter

        if not settings.rewriter_base_url or not settings.rewriter_model:
            raise RewriterConfigError(
                "IMAGESYNTH_REWRITER=openai needs IMAGESYNTH_REWRITER_BASE_URL and "
                "IMAGESYNTH_REWRITER_MODEL"
            )
        key = settings.rewriter_api_key
        rewriter = OpenAICompatibleRewriter(
            settings.rewriter_base_url,
            settings.rewriter_model,
            api_key=key.get_secret_value() if key else None,
            timeout=settings.rewriter_timeout_seconds,
            attempts=settings.rewriter_attempts,
        )
    elif kind == "local":
        from imagesynth.prompts.local_lm import LocalLMRewriter

        path = settings.rewriter_path
        if path is None or not (path.expanduser() / "config.json").is_file():
            raise RewriterConfigError(
                "IMAGESYNTH_REWRITER=local needs IMAGESYNTH_REWRITER_PATH, a folder with a "
                f"transformers causal LM (config.json); got {path}"
            )
        rewriter = LocalLMRewriter(
            path,
            device=settings.rewriter_device,
            timeout=settings.rewriter_timeout_seconds,
        )
    else:
        rewriter = NoRewriter()
    return ScreenedRewriter(rewriter, screen) if screen is not None else rewriter
