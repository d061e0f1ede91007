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
from .settings import INTERACTIVE, QUEUES, Settings, get_settings

log = logging.getLogger(__name__)

TASKS = ("ingest", "train", "sample", "augment", "evaluate")

# Message priorities (Redis: 0 is served first; kombu keeps one list per step of
# PRIORITY_STEPS and a worker pops the lower steps first). A job taken over from a dead worker,
# or re-published after the broker lost it, must not queue behind work submitted after it;
# synchronous sampling has a client waiting; deferrals of duplicates can wait.
PRIORITY_STEPS = [0, 3, 6, 9]
PRIORITY_URGENT, PRIORITY_NORMAL, PRIORITY_DEFERRED = 0, 6, 9
# kombu's own redelivery of unacknowledged messages (the backstop behind workers/recovery.py):
# it scans every unacked_restore_interval * unacked_restore_throttle seconds (kombu's defaults,
# 10 * 10, added ~100 s to every visibility timeout) for messages older than the visibility
# timeout, restoring at most unacked_restore_limit per scan, under a Redis mutex that a killed
# worker holds for unacked_mutex_expire seconds (kombu: 300).
REDIS_RESTORE = {"unacked_restore_interval": 10, "unacked_restore_throttle": 1,
                 "unacked_restore_limit": 100, "unacked_mutex_expire": 30}


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
        transport_options.update(REDIS_RESTORE, priority_steps=PRIORITY_STEPS,
                                 # consume the queues in the order a worker names them
                                 # (interactive first), not round robin
                                 queue_order_strategy="priority")
        if settings.redis_key_prefix:
            transport_options["global_keyprefix"] = settings.redis_key_prefix
    gpu, cpu = settings.queue_name("gpu"), settings.queue_name("cpu")
    app.conf.update(
        # Each queue with its own direct exchange and routing key: a bare Queue(name) would be
        # bound to the default exchange/key and gpu messages could land on cpu workers.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name)
                     for name in (settings.queue_name(q) for q in (INTERACTIVE, *QUEUES))],
        task_default_queue=cpu,
        task_routes={task_name("train"): {"queue": gpu}, task_name("augment"): {"queue": gpu}},
        task_default_priority=PRIORITY_NORMAL,
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
def _prepare_database(sender=None, **_) -> None:
    from . import db, recovery

    db.engine()  # creates or migrates the schema once, before the pool forks
    try:
        # Before this worker consumes anything: a job taken back now is published first in
        # line, ahead of whatever else waits in its queue.
        recovery.recover(getattr(sender, "hostname", None), at_start=True)
    except Exception:  # the periodic round will try again
        log.exception("job recovery at worker start failed")
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
def _start_housekeeping(sender=None, **_) -> None:
    """In the worker's main process (after the recovery at start, in _prepare_database): keep
    recovering stranded jobs, and sweep storage, from timer threads. Every worker does this; the checks are compare-and-set on the
    job records, so several workers doing it at once take each job over once."""
    from . import recovery, sweeper

    settings = get_settings()
    _timers[:] = [recovery.Every("job recovery", settings.recovery_interval, recovery.recover),
                  recovery.Every("storage sweep", settings.sweep_interval, sweeper.sweep)]
    for timer in _timers:
        timer.start()


@signals.worker_shutdown.connect
def _stop_housekeeping(**_) -> None:
    for timer in _timers:
        timer.stop()


_timers: list = []
