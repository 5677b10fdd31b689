"""prompt_extend: rewriting a user's prompt with an LLM before it reaches a GPU worker."""

from imagesynth.prompts.factory import build_rewriter, rewriter_kind
from imagesynth.prompts.rewriter import (
    NoRewriter,
    PromptRewriter,
    Rewrite,
    RewriterConfigError,
    ScreenedRewriter,
)

__all__ = [
    "NoRewriter",
    "PromptRewriter",
    "Rewrite",
    "RewriterConfigError",
    "ScreenedRewriter",
    "build_rewriter",
    "rewriter_kind",
]
