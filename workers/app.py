"""The Celery app, configured from ``Settings``.

``celery -A workers.app worker`` and ``run_worker`` both use ``get_app()``. Delivery follows
Celery's guidance for idempotent long tasks: a message is acknowledged only when its task has
finished (``acks_late``), comes back if the worker process dies (``reject_on_worker_lost``),
and a worker holds one message per process at a time (prefetch 1) so a long training job does
not sit on messages other workers could run.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from celery import Celery, signals
from kombu import Exchange, Queue

from .logs import use_json
from .settings import QUEUES, Settings, get_settings

log = logging.getLogger(__name__)

TASKS = ("ingest", "train", "sample", "augment", "evaluate")


def task_name(kind: str) -> str:
    return f"mcvae.{kind}"


def create_app(settings: Settings) -> Celery:
    app = Celery("mcvae", broker=settings.broker, backend=settings.result_backend,
                 include=["workers.tasks"])
    transport_options: dict = {}
    if settings.broker.startswith(("redis://", "rediss://", "redis+socket://")):
        # With acks_late a message stays "unacked" in Redis while its task runs; after
        # visibility_timeout Redis hands it out again (see Settings.visibility_timeout).
        transport_options["visibility_timeout"] = settings.visibility_timeout
        if settings.redis_key_prefix:
            transport_options["global_keyprefix"] = settings.redis_key_prefix
    gpu, cpu = settings.queue_name("gpu"), settings.queue_name("cpu")
    app.conf.update(
        # Each queue with its own direct exchange and routing key: a bare Queue(name) would be
        # bound to the default exchange/key and gpu messages could land on cpu workers.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name)
                     for name in (settings.queue_name(q) for q in QUEUES)],
        task_default_queue=cpu,
        task_routes={task_name("train"): {"queue": gpu}, task_name("augment"): {"queue": gpu}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.time_limit,
        # The job record is the result; a result backend is optional.
        task_ignore_result=settings.result_backend is None,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


@lru_cache(maxsize=1)
def get_app() -> Celery:
    return create_app(get_settings())


def __getattr__(name: str):
    # ``celery -A workers.app`` looks up ``app``; build it lazily so that importing this module
    # (e.g. from the gateway) reads the environment only when the app is actually wanted.
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(name)


# -- worker life cycle -------------------------------------------------------------------------
@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger=None, **_) -> None:
    """Worker logs as JSON lines, like the gateway's (MCVAE_LOG_FORMAT=text keeps Celery's)."""
    if logger is not None and os.environ.get("MCVAE_LOG_FORMAT", "json") != "text":
        use_json(logger)


@signals.worker_init.connect
def _prepare_database(**_) -> None:
    from . import db

    db.engine()  # creates or migrates the schema once, before the pool forks
    db.dispose_engines()  # children must not share the parent's connections


@signals.worker_process_init.connect
def _child_init(**_) -> None:
    from . import db

    db.dispose_engines(close=False)
    threads = get_settings().torch_threads
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


@signals.task_failure.connect
def _hard_time_limit(task_id=None, exception=None, **_) -> None:
    # The pool process was killed mid-job, so no code of the job's own can record this; the
    # worker's main process reports it here (the soft limit is handled inside the job).
    from celery.exceptions import TimeLimitExceeded

    if not isinstance(exception, TimeLimitExceeded) or not task_id:
        return
    from .jobs import fail_running

    fail_running(task_id, f"hard time limit of {get_settings().time_limit} s exceeded (MCVAE_TIME_LIMIT)")


@signals.worker_ready.connect
def _recover(sender=None, **_) -> None:
    from .jobs import recover_jobs

    try:
        recovered = recover_jobs()
        if recovered:
            log.warning("re-queued %d orphaned job(s): %s", len(recovered), ", ".join(recovered))
    except Exception:  # recovery is an optimisation; the broker redelivers anyway
        log.exception("job recovery at worker start failed")
