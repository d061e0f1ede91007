"""Who is calling: an API key (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``) names
a lab. Every route but health depends on ``current_lab``; the lab scopes every lookup, so
another lab's resources are simply not found (404, never 403: their existence is not leaked).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from . import keys
from .errors import ApiError

log = logging.getLogger("service.auth")

bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="Authorization: Bearer mcvae_<id>_<secret> (from `mcvae keys create`)")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                              description="the same key in an X-API-Key header")


@dataclass(frozen=True)
class Lab:
    name: str
    key_id: str


CHALLENGE = {"WWW-Authenticate": "Bearer"}


def client_address(request: Request) -> str:
    # The peer, or the client a trusted proxy names (uvicorn's proxy_headers, service/serve.py).
    return request.client.host if request.client else "unknown"


def refuse_if_failing(request: Request) -> None:
    """429 for an address past MCVAE_AUTH_FAILURES_PER_MINUTE failed key checks: before the key
    is even looked up, so guessing costs no database read."""
    wait = request.app.state.auth_failures.wait(client_address(request))
    if wait > 0:
        retry = max(1, math.ceil(wait))
        raise ApiError(429, f"too many failed API key checks from this address; retry in {retry} s",
                       headers={"Retry-After": str(retry)})


def failed_check(request: Request, what: str = "invalid or revoked API key") -> ApiError:
    """Count a failed key check against the caller's address; the 401 to raise."""
    address = client_address(request)
    request.app.state.auth_failures.take(address)
    log.warning("API key check failed", extra={"client": address})
    return ApiError(401, what, headers=CHALLENGE)


def presented_token(credentials: HTTPAuthorizationCredentials | None, api_key: str | None) -> str:
    token = (credentials.credentials if credentials else api_key or "").strip()
    if not token:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                       headers=CHALLENGE)
    return token


def current_lab(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(api_key_header)],
) -> Lab:
    token = presented_token(credentials, api_key)
    settings = request.app.state.settings
    refuse_if_failing(request)
    # A database outage raises here (503, service/errors.py): not a failed check.
    found = keys.verify_key(token, settings.key_cache_seconds)
    if found is None:
        raise failed_check(request)
    key_id, lab = found
    request.state.lab, request.state.key_id = lab, key_id  # for the request log
    wait = request.app.state.limiter.take(key_id)
    if wait > 0:
        retry = max(1, math.ceil(wait))
        log.warning("rate limited", extra={"key_id": key_id, "lab": lab})
        raise ApiError(429, f"rate limit of {settings.rate_limit_per_minute:g} requests per minute "
                            f"for this key exceeded; retry in {retry} s",
                       headers={"Retry-After": str(retry)})
    return Lab(lab, key_id)
