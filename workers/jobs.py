"""The job API: what the gateway and the CLI call. Neither touches Celery directly.

    job = submit("train", {"dataset": "dataset-...", "label": "AD"}, owner="lab-a")
    get(job.id, owner="lab-a").progress
    for event in events(job.id, after=last_seen): ...
    cancel(job.id, owner="lab-a")

``owner`` scopes every call: a job of another owner is reported as not found. ``owner=None``
(trusted callers such as the local CLI) sees every job.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select, update

from . import db
from .app import get_app
from .params import KINDS, queue_for, validate
from .queues import INTERACTIVE, PRIORITY_URGENT
from .records import STATES, TERMINAL, JobEventRecord, JobRecord, utcnow
from .recovery import publish, recover
from .runner import add_event
from .settings import get_settings

log = logging.getLogger(__name__)


class JobNotFound(LookupError):
    pass


class BrokerUnavailable(ConnectionError):
    """The job could not be queued, so it was not recorded either; the message names no address."""


class Job(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    owner: str
    kind: str
    state: str
    stage: str
    progress: float
    params: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: list[str]
    error: str | None
    queue: str
    attempts: int
    worker: str | None
    cancel_requested: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    heartbeat_at: dt.datetime | None = None  # last sign of life of the run in progress

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def stale(self) -> bool:
        """Running, but its worker has missed three heartbeats: probably dead. It is taken over
        once the heartbeat is MCVAE_LEASE_SECONDS old (workers/recovery.py)."""
        if self.state != "running":
            return False
        settings = get_settings()
        limit = min(settings.lease_seconds, 3 * settings.heartbeat_seconds)
        return self.heartbeat_at is None or (utcnow() - self.heartbeat_at).total_seconds() > limit


class JobEvent(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: int  # increasing; use as the Server-Sent Events id / the ``after`` cursor
    job_id: str
    at: dt.datetime
    level: str
    stage: str
    progress: float | None
    message: str


def _check_owner(owner: str | None) -> None:
    if owner is not None and (not isinstance(owner, str) or not 0 < len(owner) <= 128):
        raise ValueError("owner: expected a non-empty string of at most 128 characters")


def _visible(s, job_id: str, owner: str | None) -> JobRecord:
    rec = s.get(JobRecord, job_id) if isinstance(job_id, str) else None
    if rec is None or (owner is not None and rec.owner != owner):
        raise JobNotFound(f"no job {job_id!r}")
    return rec


def _publish(job_id: str, kind: str, queue: str) -> None:
    # A client is waiting for interactive work: it goes first within its queue as well.
    interactive = queue == get_settings().queue_name(INTERACTIVE)
    publish(job_id, kind, queue, PRIORITY_URGENT if interactive else None)


def submit(kind: str, params: dict[str, Any] | None = None, owner: str = "local",
           interactive: bool = False) -> Job:
    """Validate, record and queue a job. ValueError (naming the field) for bad input.

    ``interactive``: a client waits for it (synchronous sampling): it goes to the ``interactive``
    queue, which every worker serves before the others."""
    _check_owner(owner)
    settings = get_settings()
    parsed = validate(kind, params, settings)
    queue = settings.queue_name(INTERACTIVE) if interactive else queue_for(kind, parsed, settings)
    job_id, now = str(uuid.uuid4()), utcnow()
    with db.session() as s:
        s.add(JobRecord(id=job_id, owner=owner, kind=kind, state="queued", stage="queued",
                        progress=0.0, params=parsed.model_dump(mode="json"), metrics={},
                        artifacts=[], queue=queue, attempts=0, cancel_requested=False,
                        created_at=now, updated_at=now))
        s.flush()
        # The logical queue (gpu, cpu, interactive): the deployment's prefix is not the lab's business.
        add_event(s, job_id, f"queued on {queue.removeprefix(settings.queue_prefix)}", "queued", 0.0)
    try:
        _publish(job_id, kind, queue)
    except Exception as exc:
        # Refused, not recorded: the caller is told to try again, and no job that never started
        # lingers in its lists. Should the message have gone out after all, the worker finds no
        # record and skips it (runner.claim). The broker's address stays in the server's log.
        log.warning("job %s not queued, the broker is unreachable: %s", job_id, exc)
        with db.session() as s:
            s.execute(delete(JobEventRecord).where(JobEventRecord.job_id == job_id))
            s.execute(delete(JobRecord).where(JobRecord.id == job_id))
        raise BrokerUnavailable("the job queue is unreachable; the job was not started") from exc
    return get(job_id)


def get(job_id: str, owner: str | None = None) -> Job:
    with db.session() as s:
        return Job.model_validate(_visible(s, job_id, owner))


def cancel(job_id: str, owner: str | None = None) -> Job:
    """Cancel a job. Queued: cancelled at once and never starts. Running: asked to stop at its
    next step (it keeps its last checkpoint and ends ``cancelled``). Finished, or already asked:
    unchanged (no event), and the job is returned as it is."""
    settings = get_settings()
    now = utcnow()
    revoke = False
    with db.session() as s:
        rec = _visible(s, job_id, owner)
        # Copies: an ORM update below refreshes ``rec`` in place.
        state, stage, progress, token, heartbeat = rec.state, rec.stage, rec.progress, rec.run_token, rec.heartbeat_at
        if state in TERMINAL:
            return Job.model_validate(rec)
        # Conditional updates throughout: a worker claiming the job at this moment either sees
        # the cancellation or has already started, never half of each.
        if state == "queued":
            done = s.execute(update(JobRecord).where(JobRecord.id == job_id, JobRecord.state == "queued")
                             .values(state="cancelled", stage="cancelled", finished_at=now,
                                     updated_at=now, cancel_requested=True))
            if done.rowcount == 1:
                add_event(s, job_id, "cancelled before it started", "cancelled", progress)
                revoke = True
        if not revoke:
            # Only a job still queued or running, and only once: a job that ended meanwhile (its
            # worker recorded "cancelled" between our read and this update) or one already asked
            # gets no second "cancellation requested" event; the caller gets the job as it is.
            asked = s.execute(update(JobRecord).where(
                JobRecord.id == job_id, JobRecord.state.in_(("queued", "running")),
                JobRecord.cancel_requested.is_(False),
            ).values(cancel_requested=True, updated_at=now)).rowcount == 1
            lease = dt.timedelta(seconds=settings.lease_seconds)
            if state == "running" and (heartbeat is None or heartbeat < now - lease):
                # Its worker is gone: nothing will notice the request soon, so end it here.
                done = s.execute(update(JobRecord).where(
                    JobRecord.id == job_id, JobRecord.state == "running",
                    JobRecord.run_token.is_(None) if token is None else JobRecord.run_token == token,
                ).values(state="cancelled", stage="cancelled", finished_at=now, run_token=None,
                         heartbeat_at=None))
                if done.rowcount == 1:
                    add_event(s, job_id, "cancelled (its worker had stopped)", "cancelled", progress)
            elif asked:
                add_event(s, job_id, "cancellation requested; stopping at the next step", stage, progress)
    if revoke and not settings.embedded:
        # Lets workers drop the message without opening the record; the record check at task
        # start is what guarantees it never runs (workers started later never hear a revoke).
        try:
            get_app().control.revoke(job_id)
        except Exception:
            log.warning("revoke of %s failed; the job record still stops it", job_id, exc_info=True)
    return get(job_id)


def list_jobs(owner: str | None = None, state: str | None = None, kind: str | None = None,
              limit: int = 50, offset: int = 0) -> list[Job]:
    """Newest first."""
    _check_owner(owner)
    if state is not None and state not in STATES:
        raise ValueError(f"state: expected one of {', '.join(STATES)}, got {state!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit: expected 1..1000, got {limit}")
    if offset < 0:
        raise ValueError(f"offset: expected >= 0, got {offset}")
    query = select(JobRecord).order_by(JobRecord.created_at.desc(), JobRecord.id).limit(limit).offset(offset)
    for column, value in ((JobRecord.owner, owner), (JobRecord.state, state), (JobRecord.kind, kind)):
        if value is not None:
            query = query.where(column == value)
    with db.session() as s:
        return [Job.model_validate(r) for r in s.scalars(query)]


def events(job_id: str, after: int | None = None, owner: str | None = None,
           limit: int = 1000) -> list[JobEvent]:
    """The job's log, oldest first; ``after`` is the id of the last event already seen."""
    with db.session() as s:
        _visible(s, job_id, owner)
        query = (select(JobEventRecord).where(JobEventRecord.job_id == job_id)
                 .order_by(JobEventRecord.id).limit(limit))
        if after is not None:
            query = query.where(JobEventRecord.id > after)
        return [JobEvent.model_validate(e) for e in s.scalars(query)]


def wait(job_id: str, timeout: float | None = None, poll: float = 0.25, owner: str | None = None) -> Job:
    """Block until the job is finished; TimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = get(job_id, owner)
        if job.done:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state} ({job.stage}, {job.progress:.0%}) after {timeout} s")
        time.sleep(poll)


def recover_jobs(hostname: str | None = None) -> list[str]:
    """Re-queue orphaned jobs and re-publish lost messages now (what every worker does at start
    and then periodically; see workers/recovery.py). Returns the ids."""
    done = recover(hostname, at_start=True)
    return done["orphaned"] + done["lost"]


def fail_running(job_id: str, error: str) -> bool:
    """Mark a running job failed from outside its run (its process is gone)."""
    now = utcnow()
    with db.session() as s:
        done = s.execute(update(JobRecord).where(JobRecord.id == job_id, JobRecord.state == "running")
                         .values(state="failed", stage="failed", error=error, finished_at=now,
                                 updated_at=now, run_token=None, heartbeat_at=None))
        if done.rowcount == 1:
            add_event(s, job_id, f"failed: {error}", "failed", level="error")
    return done.rowcount == 1


def health(timeout: float = 1.0) -> dict[str, Any]:
    """For readiness probes: can we reach the database and the broker, and which workers answer.

    ``workers`` is None on the embedded broker, which cannot broadcast to workers.
    """
    report: dict[str, Any] = {"database": False, "broker": False, "workers": None}
    try:
        with db.session() as s:
            s.execute(select(1))
        report["database"] = True
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not raise
        report["database_error"] = str(exc).splitlines()[0]
    app = get_app()
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        report["broker"] = True
        if not get_settings().embedded:
            replies = app.control.ping(timeout=timeout) or []
            report["workers"] = sorted(name for reply in replies for name in reply)
    except Exception as exc:  # noqa: BLE001
        report["broker_error"] = str(exc).splitlines()[0]
    return report
