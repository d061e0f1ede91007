"""Readiness: can the gateway do its job right now? The job database answers, the broker
accepts connections, and at least one worker is alive to take what is queued.

Worker liveness: over Redis, Celery's remote-control ping (workers answer within a second).
The embedded SQLite broker has no broadcast channel, so there ``mcvae serve`` records the
worker process it started in a pid file, which ``mcvae doctor`` reads too (workers/embedded.py).
Results are kept for a few seconds: a probe every second must not ping every worker each time.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import func, select, text

from workers import db, embedded, get_settings
from workers.app import get_app
from workers.queues import INTERACTIVE, QUEUES
from workers.records import JobRecord

from . import schemas

log = logging.getLogger("service.readiness")
CACHE_SECONDS = 5.0

_cache: dict[str, tuple[float, schemas.Check]] = {}
_lock = threading.Lock()


# What /readyz says of a probe that raised. It needs no key, so these stay generic: the driver's
# text (host, port, database and user names, container names of a compose deployment) and the
# exception's type (which driver) go to the log only.
FAILED = {"database": "database unreachable", "broker": "job queue unreachable",
          "workers": "workers unreachable"}


def _cached(name: str, probe) -> schemas.Check:
    now = time.monotonic()
    with _lock:
        hit = _cache.get(name)
        if hit and now - hit[0] < CACHE_SECONDS:
            return hit[1]
    try:
        result = probe()
    except Exception as err:  # noqa: BLE001 - a failed probe is the answer, not a gateway error
        log.warning("readiness probe %s failed: %s: %s", name, type(err).__name__, err)
        result = schemas.Check(ok=False, detail=FAILED.get(name, "unavailable"))
    with _lock:
        _cache[name] = (time.monotonic(), result)
    return result


def _database() -> schemas.Check:
    with db.session() as s:
        s.execute(text("SELECT 1"))
    return schemas.Check(ok=True, detail="database reachable")


def _broker() -> schemas.Check:
    with get_app().connection_for_write(connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
        return schemas.Check(ok=True, detail="job queue reachable")


def _workers() -> schemas.Check:
    if get_settings().embedded:
        ok, detail = embedded.status()
        return schemas.Check(ok=ok, detail=detail)
    replies = get_app().control.ping(timeout=1.0) or []
    if not replies:
        return schemas.Check(ok=False, detail="no worker answered a ping within 1 s")
    return schemas.Check(ok=True, detail=f"{len(replies)} worker(s) answered")


def readiness() -> schemas.Readiness:
    checks = {"database": _cached("database", _database), "broker": _cached("broker", _broker),
              "workers": _cached("workers", _workers)}
    ok = all(c.ok for c in checks.values())
    return schemas.Readiness(status="ready" if ok else "not ready", checks=checks)


# -- figures for /metrics ---------------------------------------------------------------------------
def jobs_by_state() -> dict[tuple[str, str], int]:
    with db.session() as s:
        rows = s.execute(select(JobRecord.state, JobRecord.kind, func.count())
                         .group_by(JobRecord.state, JobRecord.kind))
        return {(state, kind): n for state, kind, n in rows}


def queue_depths() -> dict[str, int]:
    """Messages waiting in each queue of the broker (not counting those a worker holds)."""
    settings, depths = get_settings(), {}
    with get_app().connection_for_read(connect_timeout=2) as conn:
        channel = conn.default_channel
        for logical in (*QUEUES, INTERACTIVE):
            name = settings.queue_name(logical)
            try:
                depths[logical] = channel.queue_declare(queue=name, passive=True).message_count
            except Exception:  # noqa: BLE001 - never declared (nothing sent yet): nothing waiting
                depths[logical] = 0
    return depths
