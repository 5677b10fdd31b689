"""The HTTP application: thin routes over the services built in `build_services`."""

from __future__ import annotations

from fastapi import FastAPI

from imagesynth.api import routes_files, routes_tasks
from imagesynth.api.context import Services
from imagesynth.api.errors import install_error_handlers


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="imagesynth",
        description="Self-hosted text-to-image, wire-compatible with DashScope.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(routes_tasks.router)
    app.include_router(routes_files.router)
    return app
