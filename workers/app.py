"""The Celery app, configured from ``Settings``.

``celery -A workers.app worker`` and ``run_worker`` both use ``get_app()``. Delivery follows
Celery's guidance for idempotent long tasks: a message is acknowledged only when its task has
finished (``acks_late``), comes back if the worker process dies (``reject_on_worker_lost``),
and a worker holds one message per process at a time (prefetch 1) so a long training job does
not sit on messages other workers could run.
"""

from __future__ import annotations

import os
from functools import lru_cache

from celery import Celery, signals
from kombu import Exchange, Queue

from .logs import use_json
from .queues import INTERACTIVE, PRIORITY_NORMAL, PRIORITY_STEPS, QUEUES, task_name
from .settings import Settings, get_settings, on_reset

# kombu's own redelivery of unacknowledged messages (the backstop behind workers/recovery.py):
# it scans every unacked_restore_interval * unacked_restore_throttle seconds (kombu's defaults,
# 10 * 10, added ~100 s to every visibility timeout) for messages older than the visibility
# timeout, restoring at most unacked_restore_limit per scan, under a Redis mutex that a killed
# worker holds for unacked_mutex_expire seconds (kombu: 300).
REDIS_RESTORE = {"unacked_restore_interval": 10, "unacked_restore_throttle": 1,
                 "unacked_restore_limit": 100, "unacked_mutex_expire": 30}


def create_app(settings: Settings) -> Celery:
    # What a worker loads before it starts (Celery imports these ahead of its worker_init
    # signal): the tasks, and the handlers of the worker's life cycle (workers/lifecycle.py).
    app = Celery("mcvae", broker=settings.broker, backend=settings.result_backend,
                 include=["workers.tasks", "workers.lifecycle"])
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


on_reset(get_app.cache_clear)  # reset_settings(): the next get_app() reads the new settings


def __getattr__(name: str):
    # ``celery -A workers.app`` looks up ``app``; build it lazily so that importing this module
    # (e.g. from the gateway) reads the environment only when the app is actually wanted.
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(name)


# -- worker logs (the rest of the worker's life cycle: workers/lifecycle.py) --------------------
@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger=None, **_) -> None:
    """Worker logs as JSON lines, like the gateway's (MCVAE_LOG_FORMAT=text keeps Celery's)."""
    if logger is not None and os.environ.get("MCVAE_LOG_FORMAT", "json") != "text":
        use_json(logger)
