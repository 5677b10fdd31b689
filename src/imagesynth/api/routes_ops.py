"""Operations: GET /ready (readiness, for load balancers and orchestrators) and GET /metrics
(Prometheus). Like /health (liveness), neither takes a credential; put them behind the
proxy's own rules if the network is not trusted."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from imagesynth.api.context import Services, services_of

router = APIRouter()

# A blob key no one writes: reading it (and getting nothing) shows the store answers.
_PROBE_KEY = "ready-probe/missing"


def worker_window(services: Services) -> float:
    """How recently a worker must have heartbeated to count as live: one lease. Workers beat
    every lease/3, so a live worker is at most three missed beats behind, and one that has
    stopped beating has, by then, lost its leases too."""
    return services.settings.lease_seconds


def readiness(services: Services) -> dict[str, Any]:
    """Each check's verdict, and the models no live worker serves."""
    checks: dict[str, str] = {}
    unserved: list[str] = []
    try:
        services.state.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        services.blobs.read(_PROBE_KEY)
        checks["blobs"] = "ok"
    except Exception as exc:
        checks["blobs"] = f"unreachable: {type(exc).__name__}"
    if checks["database"] == "ok":
        try:
            live = services.state.live_workers(worker_window(services))
            unserved = [m for m in services.catalog.models if live.get(m, 0) == 0]
            checks["workers"] = (
                "ok" if not unserved else "no live worker for " + ", ".join(unserved)
            )
        except Exception as exc:
            checks["workers"] = f"unknown: {type(exc).__name__}"
    else:
        checks["workers"] = "unknown: the database is unreachable"
    ready = all(v == "ok" for v in checks.values())
    return {"status": "ready" if ready else "not ready", "checks": checks, "unserved": unserved}


@router.get("/ready", include_in_schema=False)
async def ready(request: Request) -> JSONResponse:
    """200 when the database and blob store answer and every catalog model has a live
    worker; 503 naming the failing checks otherwise."""
    body = await run_in_threadpool(readiness, services_of(request))
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    # In a thread: the collector reads the database.
    data = await run_in_threadpool(generate_latest, services_of(request).metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
