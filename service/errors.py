"""Every error the gateway returns is JSON: ``{"detail": "<what was wrong>", "code": ..., ...}``.

``detail`` is one sentence a person can act on (it names the field, file or limit); ``code``
is a stable word a program can branch on. Handlers here turn FastAPI's, Starlette's and the
job API's exceptions into that shape.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers import ArtifactNotFound, BrokerUnavailable, InvalidParams, JobNotFound

from .logs import request_id
from .schemas import ErrorBody

log = logging.getLogger("service.errors")

CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
         422: "invalid", 429: "rate_limited", 500: "internal", 503: "unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, detail: str, code: str | None = None,
                 headers: dict[str, str] | None = None, **extra):
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.code = code or CODES.get(status, "error")
        self.headers, self.extra = headers or {}, extra


# What a client must never read in a message: where the servers are and how they are laid out.
_INTERNAL = [
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE), "<address>"),  # broker URLs, DSNs
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b"), "<address>"),  # IPv4[:port]
    (re.compile(r"\b(?:localhost|[a-z][\w.-]*):\d{2,5}\b", re.IGNORECASE), "<address>"),  # host:port
    (re.compile(r"(?<![\w.>~])/(?:[\w.@+-]+/)+[\w.@+-]*"), "<server path>"),  # /srv/mcvae/...
]


def scrub(text: str) -> str:
    """A message fit for clients: addresses and absolute server paths replaced by placeholders
    (the full text belongs in the server's log)."""
    for pattern, placeholder in _INTERNAL:
        text = pattern.sub(placeholder, text)
    return text


class StorageError(Exception):
    """The server's own storage refused a write (disk full, read-only, not writable): the
    client's request was fine, so a 503, never a 4xx or a bare 500."""

    def __init__(self, cause: OSError):
        super().__init__(cause.strerror or type(cause).__name__)
        self.cause = cause


STORAGE_DETAIL = ("the server could not write to its storage (full or not writable); nothing was "
                  "kept: try again later, and tell the operator if it persists")


DATABASE_DETAIL = "the service's database is unavailable; nothing was changed: try again later"
INTERNAL_DETAIL = "internal error; quote the request id when reporting it"


def database_outage(exc: BaseException) -> bool:
    """A database that cannot be reached or has dropped the connection (or a pool with no free
    connection): the request was fine, so a 503. Other DBAPI errors (a constraint, bad SQL)
    are the gateway's bugs: a 500."""
    return (isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError))
            or bool(getattr(exc, "connection_invalidated", False)))


def error_response(status: int, detail: str, code: str | None = None,
                   headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    body = ErrorBody(detail=detail, code=code or CODES.get(status, "error"),
                     request_id=request_id.get(), **extra)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _loc(parts) -> str:
    return ".".join(str(p) for p in parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.detail, exc.code, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError):
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors()]
        detail = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return error_response(422, detail, "invalid", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    # Storage that refuses a write, wherever it happens (uploads, scratch space, deletions).
    # Logged by errno only: the file name may hold an archive member's name (a patient's).
    @app.exception_handler(StorageError)
    @app.exception_handler(OSError)
    async def storage_error(_: Request, exc: Exception):
        cause = exc.cause if isinstance(exc, StorageError) else exc
        log.error("storage error", extra={"error": f"{type(cause).__name__} errno {cause.errno}: {cause.strerror}"})
        return error_response(503, STORAGE_DETAIL, "storage_unavailable", headers={"Retry-After": "30"})

    # The database, wherever a route (or the key check) reads or writes it: one handler, so
    # every route answers an outage the same way. The driver's text names the host, port and
    # database: it goes to the log only; the client gets one generic line.
    @app.exception_handler(sa_exc.DBAPIError)
    @app.exception_handler(sa_exc.TimeoutError)
    async def database_error(_: Request, exc: Exception):
        if not database_outage(exc):
            log.error("database error", exc_info=exc)
            return error_response(500, INTERNAL_DETAIL)
        cause = getattr(exc, "orig", None) or exc
        log.error("database unavailable", extra={"error": f"{type(cause).__name__}: {str(cause).strip()[:500]}"})
        return error_response(503, DATABASE_DETAIL, "database_unavailable", headers={"Retry-After": "15"})

    # The job API's exceptions, wherever a route lets them through.
    @app.exception_handler(JobNotFound)
    @app.exception_handler(ArtifactNotFound)
    async def not_found(_: Request, exc: LookupError):
        # The message as raised ("no job 'x'"): str() of a LookupError adds nothing to strip.
        return error_response(404, str(exc.args[0]) if exc.args else "not found")

    @app.exception_handler(InvalidParams)
    async def invalid_params(_: Request, exc: InvalidParams):
        return error_response(422, str(exc))

    @app.exception_handler(BrokerUnavailable)
    async def broker_down(_: Request, exc: BrokerUnavailable):
        log.error("broker unavailable", extra={"error": str(exc)})
        return error_response(503, "the job queue is unreachable; the job was not started, try again later",
                              headers={"Retry-After": "10"})
