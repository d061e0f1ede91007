"""The job records are the truth about what must run; the broker only carries messages.

Two ways a job can be stranded, and what every worker does about them (at start, then every
``MCVAE_RECOVERY_INTERVAL`` seconds, from a thread of its main process):

- **orphaned**: ``running``, but its heartbeat is older than ``MCVAE_LEASE_SECONDS`` (its worker
  was killed, or froze). Its message sits unacknowledged in Redis until the visibility timeout
  (an hour by default). The job is put back to ``queued`` with a compare-and-set on its run token
  and heartbeat, so exactly one worker does it, and re-published at the front of its queue. A
  worker that starts under the node name recorded on a running job knows that job's run is dead
  (it was its own previous life) and takes it back at once, without waiting for the lease.
  A run that finished but could not record its end (the database was unreachable) kept its
  outcome on the volume (outcomes.py): that outcome is recorded instead, and nothing re-runs.
  A lease cannot run out while nobody could write a heartbeat: after this worker itself lost
  the database, it takes nothing over by lease until a whole lease has passed since it got the
  database back (the runs' heartbeats resume meanwhile).
- **lost**: ``queued`` for longer than ``MCVAE_PUBLISH_GRACE`` with no message for it in the
  broker (Redis restarted empty, a publish that failed). It is re-published, again behind a
  compare-and-set (on ``updated_at``) so that only one worker does.

Neither can make a job run twice: a delivery runs a job only after winning the claim in
``runner.claim``; a surplus message finds the job running (and defers) or finished (and is
dropped).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Callable

import redis
from sqlalchemy import select, update

from . import db, outcomes
from .app import get_app
from .queues import INTERACTIVE, PRIORITY_NORMAL, PRIORITY_STEPS, PRIORITY_URGENT, QUEUES, task_name
from .records import JobRecord, utcnow
from .runner import BOOT, TRANSIENT, add_event, adopt, tidy_adopted
from .settings import Settings, get_settings

log = logging.getLogger(__name__)
# time.monotonic() when this process last failed to reach the job database (recover() sets it).
_database_lost_at: float | None = None


def _database_lately_lost(settings: Settings) -> bool:
    """This process lost the database less than a lease ago: heartbeats written since it came
    back may not be in yet, so an expired lease says nothing about the run."""
    return _database_lost_at is not None and time.monotonic() - _database_lost_at < settings.lease_seconds


def publish(job_id: str, kind: str, queue: str, priority: int | None = None) -> None:
    # Explicitly: send_task does not apply task_default_priority.
    get_app().send_task(task_name(kind), args=[job_id], task_id=job_id, queue=queue,
                        priority=PRIORITY_NORMAL if priority is None else priority)


def requeue_orphans(settings: Settings | None = None, hostname: str | None = None) -> list[str]:
    """Running jobs whose worker is gone -> queued, re-published first in line. Returns their ids.

    ``hostname``: this worker's node name; its running jobs claimed by an earlier process
    (another boot id in the run token) are orphaned whatever their heartbeat says.
    """
    settings = settings or get_settings()
    now = utcnow()
    stale = now - dt.timedelta(seconds=settings.lease_seconds)
    with db.session() as s:
        rows = list(s.execute(select(JobRecord.id, JobRecord.kind, JobRecord.queue, JobRecord.worker,
                                     JobRecord.run_token, JobRecord.heartbeat_at, JobRecord.progress)
                              .where(JobRecord.state == "running")))
    taken = []
    waiting_out_outage = _database_lately_lost(settings)
    for job_id, kind, queue, worker, token, heartbeat, progress in rows:
        previous_life = hostname is not None and worker == hostname and not (token or "").startswith(BOOT)
        if heartbeat is not None and heartbeat > stale and not previous_life:
            continue
        if waiting_out_outage and not previous_life:
            continue
        guard = [JobRecord.id == job_id, JobRecord.state == "running",
                 JobRecord.run_token.is_(None) if token is None else JobRecord.run_token == token,
                 JobRecord.heartbeat_at.is_(None) if heartbeat is None else JobRecord.heartbeat_at == heartbeat]
        kept = outcomes.read(settings.artifacts, job_id)
        if kept is not None:  # its run finished; only recording the end failed
            with db.session() as s:
                adopted = adopt(s, job_id, guard, kept)
            if adopted:
                tidy_adopted(settings, job_id, kept)
                log.warning("job %s: worker %s stopped after finishing; its kept outcome recorded", job_id, worker)
            continue
        # The event reaches the lab: the worker's node name stays in the log.
        why = ("its worker restarted" if previous_life else
               f"its worker stopped (no heartbeat for over {settings.lease_seconds:g} s)")
        log.warning("job %s: worker %s %s; re-queued", job_id, worker,
                    "restarted" if previous_life else "stopped")
        with db.session() as s:
            won = s.execute(update(JobRecord).where(*guard).values(
                state="queued", stage="waiting for a worker", run_token=None, heartbeat_at=None,
                updated_at=now))
            if won.rowcount != 1:
                continue  # another worker took it, or its run came back to life
            add_event(s, job_id, f"{why}; re-queued to resume on another worker", "waiting for a worker",
                      progress, "warning")
        publish(job_id, kind, queue, PRIORITY_URGENT)
        taken.append(job_id)
    return taken


def republish_lost(settings: Settings | None = None, everything: bool = False) -> list[str]:
    """Queued jobs with no message in the broker -> re-published. Returns their ids.

    ``everything``: re-publish every queued job (the embedded broker, which cannot be listed).
    """
    settings = settings or get_settings()
    now = utcnow()
    quiet_since = now - dt.timedelta(seconds=settings.publish_grace)
    with db.session() as s:
        rows = list(s.execute(select(JobRecord.id, JobRecord.kind, JobRecord.queue, JobRecord.updated_at)
                              .where(JobRecord.state == "queued", JobRecord.updated_at <= quiet_since)))
    if not rows:
        return []
    if not everything:
        # Read the broker after the records: a message published before our read of the
        # records is then seen (a job younger than the grace is not looked at at all).
        present = broker_job_ids(settings)
        rows = [r for r in rows if r[0] not in present]
    republished = []
    for job_id, kind, queue, updated in rows:
        with db.session() as s:
            won = s.execute(update(JobRecord).where(
                JobRecord.id == job_id, JobRecord.state == "queued", JobRecord.updated_at == updated,
            ).values(updated_at=now))
            if won.rowcount != 1:
                continue  # claimed, cancelled, or re-published by another worker meanwhile
            if not everything:
                add_event(s, job_id, "its message was lost by the broker; re-published", "queued",
                          level="warning")
        publish(job_id, kind, queue, PRIORITY_URGENT)
        republished.append(job_id)
    return republished


def broker_job_ids(settings: Settings) -> set[str]:
    """Ids of the jobs that have a message in Redis: waiting in any priority list of our queues,
    or held unacknowledged by a worker (running, reserved, or delayed by a countdown).

    A message held for longer than a retry's longest countdown plus the lease does not count:
    a live worker would have started it by then (prefetch 1), so its holder died with it and
    only the visibility timeout (an hour) would otherwise bring it back.
    """
    prefix = settings.redis_key_prefix
    sep = "\x06\x16"  # kombu's separator of a queue and its priority step
    client = redis.Redis.from_url(settings.broker, socket_timeout=10, socket_connect_timeout=5)
    try:
        raw: list[bytes] = []
        for logical in (INTERACTIVE, *QUEUES):
            name = settings.queue_name(logical)
            for step in PRIORITY_STEPS:
                key = prefix + (name if step == 0 else f"{name}{sep}{step}")
                raw += client.lrange(key, 0, -1)
        oldest = time.time() - settings.retry_backoff_max - settings.lease_seconds
        fresh = set(client.zrangebyscore(prefix + "unacked_index", oldest, "+inf"))
        held = [json.loads(v)[0] for tag, v in client.hgetall(prefix + "unacked").items() if tag in fresh]
    finally:
        client.close()
    ids = set()
    for message in [json.loads(m) for m in raw] + held:
        job_id = (message.get("headers") or {}).get("id")
        if job_id:
            ids.add(job_id)
    return ids


def recover(hostname: str | None = None, at_start: bool = False) -> dict[str, list[str]]:
    """One round: orphaned jobs, then lost messages. Logs what it did."""
    global _database_lost_at
    settings = get_settings()
    try:
        taken = requeue_orphans(settings, hostname if at_start else None)
    except TRANSIENT:
        _database_lost_at = time.monotonic()
        raise
    # The embedded broker cannot be listed; its one worker re-sends every queued job at start
    # (duplicates are dropped by the claim).
    if settings.embedded:
        lost = republish_lost(settings, everything=True) if at_start else []
    elif settings.broker.startswith(("redis://", "rediss://")):
        lost = republish_lost(settings)
    else:  # a broker this module cannot list: its own redelivery has to do
        lost = []
    if taken:
        log.warning("re-queued %d orphaned job(s): %s", len(taken), ", ".join(taken))
    if lost:
        log.warning("re-published %d job(s) the broker had lost: %s", len(lost), ", ".join(lost))
    return {"orphaned": taken, "lost": lost}


class Every(threading.Thread):
    """Call ``fn`` every ``interval`` seconds (with 10% jitter, so workers started together do
    not all look at the same moment) until stopped; errors are logged, never fatal."""

    def __init__(self, name: str, interval: float, fn: Callable[[], object]):
        super().__init__(name=name, daemon=True)
        self.interval, self.fn = interval, fn
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval * random.uniform(0.9, 1.1)):
            try:
                self.fn()
            except Exception:  # a database or broker blip: try again next round
                log.warning("%s failed; trying again in %.0f s", self.name, self.interval, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
