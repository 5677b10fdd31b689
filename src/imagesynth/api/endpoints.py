"""The DashScope generation endpoints, and which models each serves (the catalog's
`endpoints`)."""

from __future__ import annotations

from imagesynth.catalog import ModelSpec
from imagesynth.errors import UrlError

PATHS = {
    "text2image": "/api/v1/services/aigc/text2image/image-synthesis",
    "multimodal": "/api/v1/services/aigc/multimodal-generation/generation",
    "image-generation": "/api/v1/services/aigc/image-generation/generation",
}


def served_on(spec: ModelSpec, endpoint: str) -> ModelSpec:
    """The spec, if the model is served on this endpoint; else DashScope's answer to a model
    called on the wrong URL (400 InvalidParameter, "url error"), naming the right ones."""
    if endpoint not in spec.endpoints:
        where = " or ".join(f"POST {PATHS[e]}" for e in spec.endpoints)
        raise UrlError(f"{UrlError().message} Model {spec.name} is served on {where}.")
    return spec
