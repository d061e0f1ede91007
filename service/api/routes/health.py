"""Liveness, readiness and metrics: for orchestrators and Prometheus, outside /v1."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from ... import auth, keys
from ...errors import ApiError
from ...readiness import readiness
from ...schemas import Health, Readiness
from . import errors

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Database, broker and a worker are available",
            responses={503: {"model": Readiness, "description": "Something the service needs is missing"}})
async def readyz() -> JSONResponse:
    result = await run_in_threadpool(readiness)
    return JSONResponse(result.model_dump(), status_code=200 if result.status == "ready" else 503)


def metrics_access(request: Request,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(auth.bearer)],
                   api_key: Annotated[str | None, Depends(auth.api_key_header)]) -> None:
    # Job counts of all labs together. MCVAE_METRICS_PUBLIC=true: no key (a scrape network).
    # MCVAE_METRICS_KEY set: that token only; a lab's key is refused (403), it would show a lab
    # the other labs' activity. Neither: any lab's key, as before.
    settings = request.app.state.settings
    if settings.metrics_public:
        return
    if settings.metrics_key is None:
        auth.current_lab(request, credentials, api_key)
        return
    token = auth.presented_token(credentials, api_key)
    auth.refuse_if_failing(request)
    if hmac.compare_digest(token.encode(), settings.metrics_key.get_secret_value().encode()):
        return
    if keys.verify_key(token, settings.key_cache_seconds) is not None:
        raise ApiError(403, "/metrics is the operator's: it needs the metrics key (MCVAE_METRICS_KEY), "
                            "not a lab's API key")
    raise auth.failed_check(request, "invalid metrics key")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            dependencies=[Depends(metrics_access)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format 0.0.4"}, **errors(401, 403, 429)})
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
