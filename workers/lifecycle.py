"""A worker's life cycle, as Celery signal handlers: prepare the database and take back stranded
jobs at start, reset per-process state in each pool process, record jobs killed by the hard time
limit, and run the housekeeping timers (recovery, storage sweep) while the worker is up.

Every worker loads this module before it starts: the Celery app lists it in ``include``
(workers/app.py), and Celery imports those modules ahead of its ``worker_init`` signal.
"""

from __future__ import annotations

import logging

from celery import signals
from celery.exceptions import TimeLimitExceeded

from models.threads import use_threads

from . import db, recovery, sweeper
from .jobs import fail_running
from .settings import get_settings

log = logging.getLogger(__name__)


@signals.worker_init.connect
def _prepare_database(sender=None, **_) -> None:
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
    db.dispose_engines(close=False)
    threads = get_settings().torch_threads  # this process's share, set by run_worker
    if threads > 0:
        use_threads(threads)  # loads torch: only a worker's pool process gets here, never the gateway


@signals.task_failure.connect
def _hard_time_limit(task_id=None, exception=None, **_) -> None:
    # The pool process was killed mid-job, so no code of the job's own can record this; the
    # worker's main process reports it here (the soft limit is handled inside the job).
    if not isinstance(exception, TimeLimitExceeded) or not task_id:
        return
    fail_running(task_id, f"hard time limit of {get_settings().time_limit} s exceeded (MCVAE_TIME_LIMIT)")


@signals.worker_ready.connect
def _start_housekeeping(sender=None, **_) -> None:
    """In the worker's main process (after the recovery at start, in _prepare_database): keep
    recovering stranded jobs, and sweep storage, from timer threads. Every worker does this; the checks are compare-and-set on the
    job records, so several workers doing it at once take each job over once."""
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
