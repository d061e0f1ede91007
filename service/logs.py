"""Structured logs: one JSON object per line, carrying the request id of the request at hand.

What goes in: ids (request, job, dataset, key), methods, routes, status codes, sizes, timings.
What never does: scan content, archive member names, upload file names, or query strings:
any of them may carry a patient identifier. Messages are written with that in mind.
"""

from __future__ import annotations

import contextvars
import logging
import sys

from workers.logs import JsonFormatter as BaseJsonFormatter

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(BaseJsonFormatter):
    """The workers' JSON lines, plus the id of the request being served."""

    def context(self, record: logging.LogRecord) -> dict:
        rid = getattr(record, "request_id", None) or request_id.get()
        return {"request_id": rid} if rid else {}


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the gateway's loggers and uvicorn's (its access log is off:
    the gateway writes its own, with the request id and the route instead of the raw URL)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("service", "uvicorn", "uvicorn.error", "workers"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
