"""The HTTP application: thin routes over the services built in `Runtime.services`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from imagesynth.api import (
    openapi,
    routes_admin,
    routes_console,
    routes_files,
    routes_multimodal,
    routes_openai,
    routes_ops,
    routes_tasks,
    routes_uploads,
)
from imagesynth.api.context import Services
from imagesynth.api.errors import install_error_handlers
from imagesynth.api.paths import DropTrailingSlash
from imagesynth.api.server import LimitHeaders


def create_app(
    services: Services,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """on_startup / on_shutdown run in the app's lifespan: the shutdown hook runs while the
    server is still alive, before it re-raises the signal that stopped it, so background
    work (the in-process worker) can hand its task back to the queue."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await run_in_threadpool(on_shutdown)

    app = FastAPI(
        title="imagesynth",
        description="Self-hosted text-to-image, wire-compatible with DashScope.",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    # No 307 to the slashless path: DropTrailingSlash answers it directly (api/paths.py).
    app.router.redirect_slashes = False
    install_error_handlers(app)
    app.add_middleware(DropTrailingSlash)
    app.add_middleware(LimitHeaders)  # added last: the outermost
    app.include_router(routes_tasks.router)
    app.include_router(routes_multimodal.router)
    app.include_router(routes_uploads.router)
    app.include_router(routes_files.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_console.router)
    openapi.install(app)
    return app
