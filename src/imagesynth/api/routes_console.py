"""The web console: static pages at `/` and `/console/...`, and the catalog they build the
form from (`GET /console/api/models`).

The pages are a client of the public API (the DashScope routes with the user's key, the admin
API with the admin credential), held in the browser's session storage and sent as a bearer
header: no cookie is ever set, so no other site can ride one (no CSRF), and the console has no
state-changing route of its own. Every page carries a strict Content-Security-Policy: scripts,
styles and requests from this origin only, no inline script.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from imagesynth.api import openapi
from imagesynth.api.context import authenticate, request_id_of, services_of
from imagesynth.catalog import REF_MODES, ModelSpec
from imagesynth.domain import SEED_MAX

router = APIRouter()

ASSET_PREFIX = "/console/"
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # The key lives in session storage: a cached copy of a page holds nothing, but the pages
    # change with the code, so a browser should ask again.
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@cache
def _assets() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, media type) for every file of the packaged console folder, read once.
    Only these names are served: no path from the request reaches the file system."""
    folder = resources.files("imagesynth.api").joinpath("console")
    out: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            out[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return out


def _page(name: str) -> Response:
    body, media_type = _assets()[name]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/", include_in_schema=False)
async def console_index() -> Response:
    return _page("index.html")


@router.get("/console", include_in_schema=False)
async def console_root() -> Response:
    return RedirectResponse("/", status_code=308)


@router.get("/console/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    if name not in _assets():
        return Response(
            "Not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS
        )
    return _page(name)


def model_rules(spec: ModelSpec, styles: list[str], currency: str) -> dict[str, Any]:
    """What the console's form needs to know of a model: the same rules `ModelSpec.validate`
    enforces, so the form offers only what the API accepts."""
    return {
        "name": spec.name,
        "family": str(spec.family),
        "demo": spec.is_demo,
        "sizes": list(spec.sizes),
        "min_side": spec.min_side,
        "max_side": spec.max_side,
        "min_pixels": spec.min_pixels,
        "max_pixels": spec.max_pixels,
        "max_aspect": spec.max_aspect,
        "default_size": spec.default_size,
        "size_rule": spec.size_rule(),
        "n_max": spec.n_max,
        "n_default": spec.n_default,
        "prompt_max_chars": spec.prompt_max_chars,
        "negative_prompt_max_chars": spec.negative_prompt_max_chars,
        "prompt_extend_default": spec.prompt_extend_default,
        "result_prompts": spec.result_prompts,
        "styles": styles if spec.styles else [],
        "reference_images": spec.reference_images,
        "ref_modes": list(REF_MODES) if spec.reference_images else [],
        "steps_default": spec.default_steps,
        "steps_max": spec.max_steps,
        "guidance_default": spec.guidance,
        "guidance_min": spec.guidance_min,
        "guidance_max": spec.guidance_max,
        "seed_max": SEED_MAX,
        "sync": spec.sync,
        "price": str(spec.price),
        "currency": currency,
    }


@router.get("/console/api/models", openapi_extra=openapi.operation())
async def console_models(request: Request) -> dict[str, Any]:
    """The models the console's playground can submit to (those on the text2image endpoint,
    asynchronously), with their rules. Any API key may read it."""
    await authenticate(request)
    catalog = services_of(request).catalog
    styles = list(catalog.styles)
    models = [
        model_rules(spec, styles, catalog.billing.currency)
        for spec in catalog.models.values()
        if "text2image" in spec.endpoints
    ]
    return {"request_id": request_id_of(request), "models": models}
