"""Per request: a request id (the caller's X-Request-ID if sane, else a new one) echoed in the
response, one JSON log line, the Prometheus figures, and a JSON 500 for anything unexpected.

A plain ASGI middleware rather than BaseHTTPMiddleware: that one buffers streaming responses
(event streams, zip downloads) in ways that break them.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from .errors import INTERNAL_DETAIL, error_response
from .logs import request_id
from .metrics import Metrics

log = logging.getLogger("service.access")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = {"code": 500, "started": False, "bytes": 0}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                status["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if status["started"]:
                raise  # too late for a JSON body; the connection is closed instead
            response = error_response(500, INTERNAL_DETAIL)
            await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status["code"], seconds)
            state = scope.get("state") or {}
            # The route template, not the URL: ids only, no query strings (they may hold names).
            log.info("request", extra={"request_id": rid, "method": scope["method"], "route": route,
                                       "status": status["code"],
                                       "ms": round(seconds * 1000, 1), "bytes": status["bytes"],
                                       "lab": state.get("lab"), "key_id": state.get("key_id"),
                                       "ids": scope.get("path_params") or None})
            request_id.reset(token)
