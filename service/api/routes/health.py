"""Liveness, readiness and metrics: for orchestrators and Prometheus, outside /v1."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from ...auth import api_key_header, bearer, current_lab
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
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                   api_key: Annotated[str | None, Depends(api_key_header)]) -> None:
    # Job counts of all labs together: any lab's key, or none on a scrape network that
    # sets MCVAE_METRICS_PUBLIC=true.
    if not request.app.state.settings.metrics_public:
        current_lab(request, credentials, api_key)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            dependencies=[Depends(metrics_access)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format 0.0.4"}, **errors(401, 429)})
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
