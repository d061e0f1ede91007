"""The FastAPI application: ``create_app()``; served by ``service.serve`` (``mcvae serve``).

    uvicorn --factory service.app:create_app

Never imports torch: jobs are sent to workers by name, and everything the gateway reads
(job records, artifact manifests, model configs) is JSON.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from . import __version__, db, errors
from .api.routes import augmentations, datasets, health, jobs, models, usage
from .logs import configure_logging
from .metrics import Metrics
from .middleware import RequestContext
from .ratelimit import RateLimiter
from .schemas import ErrorBody, FieldError
from .settings import ServiceSettings, get_service_settings
from .waiter import JobWaiter

log = logging.getLogger("service.app")
DOCS_ASSETS = "/docs-assets"  # Swagger UI's script, style sheet and icon

DESCRIPTION = """
Synthetic minority-class MRI scans that balance imbalanced cohorts.

Upload a cohort (`POST /v1/datasets`), start an augmentation (`POST /v1/augmentations`),
follow it (`GET /v1/jobs/{id}/events`, Server-Sent Events) and download the result
(`GET /v1/jobs/{id}/result`). Or train a model (`POST /v1/models`) and ask it for scans
(`POST /v1/models/{id}/samples`).

Every `/v1` route needs a lab's API key (`mcvae keys create --lab NAME`), as
`Authorization: Bearer <key>` or `X-API-Key: <key>`. A lab sees only its own datasets, models
and jobs. Errors are JSON: `{"detail": "...", "code": "...", "request_id": "..."}`.
"""

TAGS = [
    {"name": "datasets", "description": "Cohorts uploaded as .zip or .tar.gz, validated by an ingest job"},
    {"name": "models", "description": "Trained MCMC-refined VAEs, and synthetic scans from them"},
    {"name": "augmentations", "description": "Balance a dataset with synthetic minority-class scans"},
    {"name": "jobs", "description": "Everything that runs on a worker: state, progress, results"},
    {"name": "usage", "description": "Storage held by the lab's datasets, models and outputs"},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics"},
]


def create_app(settings: ServiceSettings | None = None, configure_logs: bool = True) -> FastAPI:
    settings = settings or get_service_settings()
    if configure_logs:
        configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await run_in_threadpool(db.ensure_schema)  # migrations now, not in the first request
        except Exception:  # the database may come up later; /readyz says so meanwhile
            log.warning("database not reachable at start-up", exc_info=True)
        yield

    # /docs with Swagger UI's files served from the gateway itself (fastapi-offline ships them):
    # FastAPI's own page loads them from a CDN, and is blank on a hospital LAN with no internet.
    app = FastAPIOffline(title="mcvae", version=__version__, description=DESCRIPTION, openapi_tags=TAGS,
                         lifespan=lifespan, redoc_url=None, static_url=DOCS_ASSETS)
    app.state.settings = settings
    app.state.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    failures = settings.auth_failures_per_minute
    app.state.auth_failures = RateLimiter(failures, max(1, int(failures)))  # per client address
    app.state.metrics = Metrics()
    app.state.waiter = JobWaiter(settings.job_poll_seconds)
    errors.install(app)
    for module in (datasets, models, augmentations, jobs, usage, health):
        app.include_router(module.router)
    app.add_middleware(RequestContext, metrics=app.state.metrics)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes, tags=app.openapi_tags)
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorBody, FieldError):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schema.pop("$defs", None)
            components.setdefault(model.__name__, schema)
        app.openapi_schema = spec
    return app.openapi_schema
