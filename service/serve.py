"""``mcvae serve``: the gateway under uvicorn, plus a local worker when there is no broker.

With MCVAE_BROKER_URL unset (the embedded SQLite broker), one command gives a working service
on one machine: a worker process per queue (workers/embedded.py: training in one, ingest in
the other) is started beside the gateway and stopped with it. With a broker configured, workers run elsewhere (``mcvae worker``) and this serves
the gateway only.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

from workers import embedded, get_settings, reset_settings

from .logs import configure_logging
from .settings import get_service_settings

log = logging.getLogger("service.serve")


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          embedded_worker: bool | None = None, worker_concurrency: int = 1,
          device: str | None = None, log_level: str | None = None) -> None:
    """Serve the gateway until interrupted (blocks).

    ``workers``: uvicorn processes. ``embedded_worker``: start a job worker beside the gateway;
    default: when no broker is configured. ``worker_concurrency`` and ``device`` are that
    worker's. The listen address defaults to loopback: expose it on purpose (``host="0.0.0.0"``)
    behind the hospital's TLS proxy.
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    reset_settings()
    settings = get_settings()
    level = (log_level or get_service_settings().log_level).upper()
    configure_logging(level)
    start_worker = settings.embedded if embedded_worker is None else embedded_worker
    started: list[subprocess.Popen] = []
    if start_worker:
        settings.data_dir.expanduser().mkdir(parents=True, exist_ok=True)
        log_path = settings.data_dir.expanduser() / "worker.log"
        # One per queue, so an ingest never waits behind training; recorded in the pid file that
        # /readyz, `mcvae doctor` and `mcvae worker-ping` read (they cannot be pinged).
        started = embedded.start(worker_concurrency, device, str(log_path), settings)
        log.info("embedded workers started", extra={"pids": [w.pid for w in started], "worker_log": str(log_path)})
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with Python's default
    # handler that ends the process before the finally below could stop the worker. Raising
    # SystemExit instead unwinds through it (SIGINT already does, as KeyboardInterrupt).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run("service.app:create_app", factory=True, host=host, port=port, workers=workers,
                    log_config=None, access_log=False, log_level=level.lower(),
                    proxy_headers=True, server_header=False, timeout_graceful_shutdown=10)
    finally:
        if started:
            _stop(started)
            embedded.clear(settings)


def _exit_cleanly(*_) -> None:
    raise SystemExit(0)


def _stop(started: list[subprocess.Popen]) -> None:
    """Warm shutdown first (a short job may finish), then kill: an interrupted job is taken up
    again from its last checkpoint when a worker next starts."""

    def hurry(*_):  # a second Ctrl-C / SIGTERM while waiting: kill now rather than orphan them
        for worker in started:
            _signal(worker, signal.SIGKILL)

    signal.signal(signal.SIGINT, hurry)
    signal.signal(signal.SIGTERM, hurry)
    for worker in started:
        _signal(worker, signal.SIGTERM)
    for worker in started:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal(worker, signal.SIGKILL)
            worker.wait(timeout=10)
        log.info("embedded worker stopped", extra={"pid": worker.pid})


def _signal(worker: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(worker.pid, sig)  # the worker and its pool children
    except ProcessLookupError:
        pass
