"""Content safety: blocked terms in prompts, a classifier for generated images, an audit log."""

from imagesynth.safety.images import (
    ImageClassifier,
    ImageSafetyUnavailable,
    NoImageClassifier,
    NudeNetClassifier,
    OpenNsfwClassifier,
    Verdict,
    build_image_classifier,
)
from imagesynth.safety.terms import Match, TermFilter, TermsFileError, build_term_filter

__all__ = [
    "ImageClassifier",
    "ImageSafetyUnavailable",
    "Match",
    "NoImageClassifier",
    "NudeNetClassifier",
    "OpenNsfwClassifier",
    "TermFilter",
    "TermsFileError",
    "Verdict",
    "build_image_classifier",
    "build_term_filter",
]
