"""One delivery of a job's task on a worker: claim the job, run its handler, record the end.

Deliveries are at-least-once (acks_late, redelivery after a lost worker, Redis's visibility
timeout), so every delivery first looks at the job record:
- finished or cancelled: nothing to do (idempotent by job id);
- running with a fresh heartbeat on some worker: a duplicate; it re-queues itself for later
  (deferral) rather than being dropped, so that if that worker dies there is still a message
  that will take the job over;
- queued, or running with a stale heartbeat (its worker died): claim it with a new run token
  (compare-and-set: only one delivery wins) and run. Training resumes from its last checkpoint.
  But if an earlier run finished and kept its outcome (outcomes.py), that outcome is recorded
  and nothing runs.
While running, a heartbeat thread refreshes the claim; the handler polls for cancellation and
for a lost claim at every step.

Failures: bad input (ValueError, missing artifacts) fails the job at once with a readable
message and no retry; broker or database connection errors are retried with exponential
backoff; anything else fails the job and is re-raised for the worker log. The end itself (how
the run ended) is kept on the volume and recorded however long the database stays away (``end``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy import case, select, update

from . import db, outcomes
from .artifacts import ArtifactNotFound, ArtifactStore
from .context import JobCancelled, JobContext, json_safe
from .handlers import HANDLERS
from .params import SCHEMAS, check_budget, describe
from .queues import PRIORITY_DEFERRED
from .records import DELIVERED, TERMINAL, JobEventRecord, JobRecord, utcnow
from .settings import Settings, get_settings

log = logging.getLogger(__name__)

# Errors that say "the broker or the database is unreachable right now", not "this job is bad".
TRANSIENT = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
)
CANCEL_POLL_SECONDS = 0.5  # how often should_stop() looks at the record during a step loop
# Recording a run's end while the database is unreachable: first retry after this long, then
# doubling up to the cap (short: the end should be recorded soon after the database is back).
RECORD_RETRY_FIRST, RECORD_RETRY_MAX = 0.5, 2.0
# This worker process tree's life: the first characters of every run token it hands out (pool
# children inherit it from the main process). A worker that restarts under the same node name
# finds its previous life's runs by a token that does not start with it (recovery.py).
BOOT = uuid.uuid4().hex[:8]


def new_token() -> str:
    return BOOT + uuid.uuid4().hex[:24]


def previous_life(rec: JobRecord, hostname: str) -> bool:
    """The job's run was claimed by an earlier process under this worker's node name: dead."""
    return rec.worker == hostname and rec.run_token is not None and not rec.run_token.startswith(BOOT)


def add_event(s, job_id: str, message: str, stage: str = "", progress: float | None = None,
              level: str = "info") -> None:
    s.add(JobEventRecord(job_id=job_id, at=utcnow(), level=level, stage=stage,
                         progress=progress, message=message))


# -- claiming ----------------------------------------------------------------------------------
@dataclass
class Claim:
    outcome: str  # "run", "busy" (live elsewhere: defer), "skip" (nothing to do)
    reason: str = ""
    token: str | None = None
    params: dict[str, Any] | None = None
    queue: str | None = None
    attempt: int = 0
    progress: float = 0.0
    metrics: dict[str, Any] | None = None


def _live(rec: JobRecord, hostname: str, settings: Settings) -> bool:
    stale_before = utcnow() - dt.timedelta(seconds=settings.lease_seconds)
    return (rec.state == "running" and rec.heartbeat_at is not None and rec.heartbeat_at > stale_before
            and not previous_life(rec, hostname))


def _unchanged(rec: JobRecord) -> tuple:
    """Compare-and-set conditions: the record is still as ``rec`` saw it."""
    same_version = JobRecord.run_token.is_(None) if rec.run_token is None else JobRecord.run_token == rec.run_token
    return JobRecord.id == rec.id, JobRecord.state == rec.state, same_version


def claim(job_id: str, hostname: str, settings: Settings) -> Claim:
    # An earlier run finished and kept its outcome, but its worker stopped before recording it
    # (a database outage at its end): record that outcome, since running again would redo it.
    kept = outcomes.read(settings.artifacts, job_id)
    if kept is not None:
        with db.session() as s:
            rec = s.get(JobRecord, job_id)
            if rec is not None and rec.state not in TERMINAL and not _live(rec, hostname, settings):
                if not adopt(s, job_id, _unchanged(rec), kept):
                    return Claim("busy", "ended or claimed by another delivery", queue=rec.queue)
                adopted = True
            else:
                adopted = False
        if adopted:
            tidy_adopted(settings, job_id, kept)
            return Claim("skip", "its earlier run had finished; outcome recorded")
    now = utcnow()
    with db.session() as s:
        rec = s.get(JobRecord, job_id)
        if rec is None:
            return Claim("skip", "no such job")
        if rec.state in TERMINAL:
            return Claim("skip", f"already {rec.state}")
        if _live(rec, hostname, settings):
            return Claim("busy", f"running on {rec.worker}", queue=rec.queue)
        guard = _unchanged(rec)
        if rec.cancel_requested or rec.attempts >= settings.max_attempts:
            if rec.cancel_requested:
                state, error = "cancelled", None
                message = ("cancelled before it started" if rec.state == "queued"
                           else "cancelled (its worker had stopped)")
            else:
                state = "failed"
                error = message = (f"gave up after {rec.attempts} attempts: its worker was lost or "
                                   "hit connection errors every time (MCVAE_MAX_ATTEMPTS)")
            done = s.execute(update(JobRecord).where(*guard).values(
                state=state, stage=state, error=error, finished_at=now, updated_at=now,
                run_token=None, heartbeat_at=None))
            if done.rowcount == 1:
                add_event(s, job_id, message, state, rec.progress, "error" if error else "info")
            return Claim("skip", message)
        token = new_token()
        # Read before the update: the ORM refreshes ``rec`` from it.
        attempt, progress = rec.attempts + 1, rec.progress
        verb = "resumed" if rec.attempts else "started"
        won = s.execute(update(JobRecord).where(*guard).values(
            state="running", run_token=token, worker=hostname, heartbeat_at=now, updated_at=now,
            attempts=JobRecord.attempts + 1, started_at=rec.started_at or now, stage="starting",
            error=None))
        if won.rowcount != 1:
            return Claim("busy", "claimed by another delivery", queue=rec.queue)
        # Events reach the lab (SSE, the job's events): no node name or pid of ours in them.
        # Which worker runs it is the record's ``worker`` and this log line, for operators.
        add_event(s, job_id, f"{verb} (attempt {attempt})", "starting", progress)
        log.info("job %s %s on %s (attempt %d)", job_id, verb, hostname, attempt)
        return Claim("run", token=token, params=dict(rec.params), queue=rec.queue, attempt=attempt,
                     progress=progress, metrics=dict(rec.metrics or {}))


# -- the recorded context ------------------------------------------------------------------------
class RecordedContext(JobContext):
    """A JobContext whose reports go to the job record, guarded by the run token."""

    def __init__(self, job_id: str, claimed: Claim, store: ArtifactStore, settings: Settings):
        super().__init__(job_id, store, settings.device, settings)
        self.token = claimed.token
        self.fraction, self.metrics = claimed.progress, dict(claimed.metrics or {})
        self.lost = threading.Event()  # another delivery now owns the job
        # The claim has just written the record: the first progress write can wait an interval
        # (a job shorter than that costs no progress writes at all).
        self._last_write = time.monotonic()
        self._last_poll = time.monotonic()
        # The job's own soft deadline, checked at every step: Celery's soft limit is a signal that
        # may strike inside a database call, where a driver or the pool can swallow it; this one
        # cannot be lost. Celery's limit stays as the backstop for code that never calls check().
        self._deadline = time.monotonic() + settings.soft_time_limit
        self._metrics_dirty = False
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def _mine(self):
        return JobRecord.id == self.job_id, JobRecord.run_token == self.token

    # heartbeat -------------------------------------------------------------------------------
    def start(self) -> None:
        self._beat.start()

    def close(self) -> None:
        self._stop.set()
        self._beat.join(timeout=5)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                self._poll(touch=True)
            except Exception:  # a database blip: keep beating; the lease allows for some
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    def _poll(self, touch: bool) -> None:
        with db.session() as s:
            if touch:
                beat = s.execute(update(JobRecord).where(*self._mine())
                                 .values(heartbeat_at=utcnow()))
                if beat.rowcount != 1:
                    self.lost.set()
            row = s.execute(select(JobRecord.cancel_requested, JobRecord.run_token)
                            .where(JobRecord.id == self.job_id)).one_or_none()
        if row is None or row.run_token != self.token:
            self.lost.set()
        elif row.cancel_requested:
            self._cancel.set()
        self._last_poll = time.monotonic()

    def should_stop(self) -> bool:
        # Every step loop asks this, so the deadline is enforced here (raising, like the signal);
        # a cancellation already asked for wins.
        if time.monotonic() > self._deadline and not self._cancel.is_set():
            raise SoftTimeLimitExceeded("the job's soft time limit")
        stopping = self._cancel.is_set() or self.lost.is_set()
        if not stopping and time.monotonic() - self._last_poll >= CANCEL_POLL_SECONDS:
            with self._tolerating("cancellation check"):
                self._poll(touch=False)
        return self._cancel.is_set() or self.lost.is_set()

    @contextlib.contextmanager
    def _tolerating(self, what: str):
        # A database blip must not abort hours of training: reports are skipped until it is
        # back (the lease covers a while; past that, another worker may take the job over and
        # this run then notices it lost its claim).
        try:
            yield
        except TRANSIENT as exc:
            if _caused_by(exc, SoftTimeLimitExceeded):
                raise  # the time limit, not the database: the job must end
            self._last_poll = time.monotonic()
            log.warning("job %s: %s skipped, database unreachable", self.job_id, what, exc_info=True)

    def check(self) -> None:
        if self.should_stop():
            raise JobCancelled("taken over by another worker" if self.lost.is_set() else "cancelled")

    # reports ---------------------------------------------------------------------------------
    def _record_progress(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.settings.progress_interval:
            return
        self._last_write = now
        values: dict[str, Any] = {
            # max(progress, new) in SQL as well: monotonic even across workers that resume a job.
            "progress": case((JobRecord.progress < self.fraction, self.fraction), else_=JobRecord.progress),
            "stage": self.stage, "updated_at": utcnow(), "heartbeat_at": utcnow(),
        }
        if self._metrics_dirty:
            values["metrics"], self._metrics_dirty = self.metrics, False
        with self._tolerating("progress update"), db.session() as s:
            done = s.execute(update(JobRecord).where(*self._mine()).values(**values))
            if done.rowcount != 1:
                self.lost.set()
                return
            add_event(s, self.job_id, "", self.stage, self.fraction)

    def _record_event(self, message: str, level: str) -> None:
        with self._tolerating("log event"), db.session() as s:
            add_event(s, self.job_id, message, self.stage, self.fraction, level)

    def _record_metrics(self) -> None:
        # Written with the next progress update (and in full when the job ends): per-epoch
        # metrics of a fast model would otherwise cost a transaction every few steps.
        self._metrics_dirty = True


# -- ending a run ----------------------------------------------------------------------------------
def _end_values(state: str, *, error: str | None = None, metrics: dict[str, Any] | None = None,
                artifacts: list[str] | None = None) -> dict[str, Any]:
    now = utcnow()
    values: dict[str, Any] = {"state": state, "stage": state, "error": error, "finished_at": now,
                              "updated_at": now, "run_token": None, "heartbeat_at": None}
    if state in DELIVERED:
        values["progress"] = 1.0
    if metrics is not None:
        values["metrics"] = json_safe(metrics)
    if artifacts is not None:
        values["artifacts"] = list(artifacts)
    return values


def finish(job_id: str, token: str, state: str, message: str, *, error: str | None = None,
           metrics: dict[str, Any] | None = None, artifacts: list[str] | None = None,
           progress: float | None = None) -> bool:
    """End a run: only the run holding ``token`` can, and only once."""
    values = _end_values(state, error=error, metrics=metrics, artifacts=artifacts)
    with db.session() as s:
        done = s.execute(update(JobRecord).where(
            JobRecord.id == job_id, JobRecord.run_token == token, JobRecord.state == "running"
        ).values(**values))
        if done.rowcount != 1:
            return False
        add_event(s, job_id, message, state, 1.0 if state in DELIVERED else progress,
                  "error" if state == "failed" else "info")
    return True


def adopt(s, job_id: str, guard, kept: dict[str, Any]) -> bool:
    """Record an outcome a dead run kept (outcomes.py) instead of running the job again; ``guard``:
    the compare-and-set conditions under which the caller may end the job. Returns True if it did.
    The caller then removes the kept file and the outcome's obsolete artifacts."""
    state = kept["state"]
    values = _end_values(state, error=kept.get("error"), metrics=kept.get("metrics"),
                         artifacts=kept.get("artifacts"))
    if s.execute(update(JobRecord).where(*guard).values(**values)).rowcount != 1:
        return False
    add_event(s, job_id, "its run had finished before its worker stopped; its outcome recorded, "
              "nothing re-run", "finishing", level="warning")
    add_event(s, job_id, kept.get("message") or state, state,
              1.0 if state in DELIVERED else kept.get("progress"), "error" if state == "failed" else "info")
    log.warning("job %s: recorded the %s outcome its dead run had kept", job_id, state)
    return True


def tidy_adopted(settings: Settings, job_id: str, kept: dict[str, Any]) -> None:
    """After ``adopt``: what the recorded outcome made obsolete, and the kept file itself."""
    store = ArtifactStore(settings.artifacts)
    for artifact_id in kept.get("obsolete") or []:
        store.delete(artifact_id)
    outcomes.forget(settings.artifacts, job_id)


def release(job_id: str, token: str, reason: str) -> None:
    """Give the claim back so a retry can take the job at once (no lease to wait out). The job
    is ``queued`` again until then: nothing runs it, and a cancellation ends it at once."""
    try:
        with db.session() as s:
            done = s.execute(update(JobRecord).where(JobRecord.id == job_id, JobRecord.run_token == token,
                                                     JobRecord.state == "running")
                             .values(state="queued", run_token=None, heartbeat_at=None,
                                     stage="waiting to retry", updated_at=utcnow()))
            if done.rowcount == 1:
                add_event(s, job_id, reason, "waiting to retry", level="warning")
    except Exception:
        log.warning("could not release job %s (the lease will expire instead)", job_id, exc_info=True)


def readable(exc: BaseException) -> str:
    """One line for the job record (and the user): no traceback, no pydantic boilerplate."""
    if isinstance(exc, ValidationError):
        return describe(exc)
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:  # str(KeyError) adds quotes around the message
        text = str(exc.args[0])
    return text.splitlines()[0] if len(text) < 2000 else text[:2000] + "..."


# -- the task body -----------------------------------------------------------------------------------
def execute(task, job_id: str, kind: str) -> str:
    """Run one delivery of job ``job_id``; returns what happened (for logs and tests)."""
    settings = get_settings()
    hostname = getattr(task.request, "hostname", None) or socket.gethostname()
    try:
        got = claim(job_id, hostname, settings)
    except TRANSIENT as exc:
        raise retry(task, job_id, exc, settings)
    if got.outcome == "skip":
        log.info("job %s: %s; nothing to do", job_id, got.reason)
        return got.reason
    if got.outcome == "busy":
        defer(task, job_id, got.queue, settings)
        return "deferred"

    # Staging folders of this run carry its token, so the sweeper can tell them from a dead run's.
    store = ArtifactStore(settings.artifacts, run_tag=got.token)
    ctx = RecordedContext(job_id, got, store, settings)
    ctx.start()
    try:
        params = SCHEMAS[kind].model_validate(got.params)
        # The deployment's job-size limits, again: a job queued by an older or laxer gateway
        # fails here with the gateway's message instead of running.
        check_budget(params, settings)
        outcome = HANDLERS[kind](ctx, params)
        return end(ctx, outcome.state, outcome.message, metrics={**ctx.metrics, **outcome.metrics},
                   artifacts=outcome.artifacts, obsolete=outcome.obsolete)
    except JobCancelled as stop:
        if ctx.lost.is_set():
            log.warning("job %s was taken over by another worker; this run stops", job_id)
            return "lost"
        return end(ctx, "cancelled", f"cancelled: {stop}", metrics=ctx.metrics, progress=ctx.fraction)
    except SoftTimeLimitExceeded:
        return _time_limit_failure(ctx, settings, broken_connection=False)
    except TRANSIENT as exc:
        if _caused_by(exc, SoftTimeLimitExceeded):
            return _time_limit_failure(ctx, settings, broken_connection=True)
        release(job_id, got.token, f"connection error, will retry: {readable(exc)}")
        raise retry(task, job_id, exc, settings)
    except (ValueError, ArtifactNotFound) as exc:
        # Bad input: retrying cannot help. The message is for the user, so no traceback.
        return end(ctx, "failed", f"failed: {readable(exc)}", error=readable(exc), metrics=ctx.metrics,
                   progress=ctx.fraction)
    except OSError as exc:
        # The artifact volume refused a write or read (permissions, a full disk, an NFS blip):
        # usually passing, so the job is retried with backoff and resumes from its last
        # checkpoint; after MCVAE_STORAGE_RETRIES it fails with the error.
        if (task.request.retries or 0) >= settings.storage_retries:
            error = f"storage error after {settings.storage_retries} retries: {readable(exc)}"
            return end(ctx, "failed", f"failed: {error}", error=error, metrics=ctx.metrics,
                       progress=ctx.fraction)
        release(job_id, got.token, f"storage error, will retry: {readable(exc)}")
        raise storage_retry(task, exc, settings)
    except Exception as exc:
        if _caused_by(exc, SoftTimeLimitExceeded):
            return _time_limit_failure(ctx, settings, broken_connection=True)
        error = f"internal error ({type(exc).__name__}): {readable(exc)}"
        end(ctx, "failed", f"failed: {error}", error=error, metrics=ctx.metrics, progress=ctx.fraction)
        raise
    finally:
        ctx.close()


def _time_limit_failure(ctx, settings: Settings, broken_connection: bool) -> str:
    if broken_connection:
        # The limit struck inside a database call whose cleanup then failed: the pooled
        # connection is in an unknown state, so drop the pool before recording the failure.
        db.dispose_engines()
    return end(ctx, "failed", "time limit exceeded", metrics=ctx.metrics, progress=ctx.fraction,
               error=f"time limit of {settings.soft_time_limit} s exceeded (MCVAE_SOFT_TIME_LIMIT)")


def end(ctx: RecordedContext, state: str, message: str, *, error: str | None = None,
        metrics: dict[str, Any] | None = None, artifacts: list[str] | None = None,
        obsolete: list[str] | None = None, progress: float | None = None) -> str:
    """Record how the run ended, once, even across a database outage; returns the job's state.

    The outcome is kept on the volume first (outcomes.py). While the database is unreachable the
    record is retried with back-off, and the run's heartbeat thread (still running) renews its
    lease as soon as the database is back, so nobody takes the job over meanwhile; if this
    worker dies first, whoever takes the job over records the kept outcome instead of re-running.
    """
    root = ctx.settings.artifacts
    outcomes.keep(root, ctx.job_id, {"token": ctx.token, "state": state, "message": message, "error": error,
                                     "metrics": json_safe(metrics) if metrics is not None else None,
                                     "artifacts": artifacts, "obsolete": obsolete or [], "progress": progress})
    delay = RECORD_RETRY_FIRST
    while True:
        try:
            recorded = finish(ctx.job_id, ctx.token, state, message, error=error, metrics=metrics,
                              artifacts=artifacts, progress=progress)
            break
        except TRANSIENT as exc:
            if _caused_by(exc, SoftTimeLimitExceeded):
                raise
            log.warning("job %s: could not record that it %s (database unreachable); retrying in %.1f s",
                        ctx.job_id, state, delay)
            time.sleep(delay)
            delay = min(2 * delay, RECORD_RETRY_MAX)
    if recorded:
        # Only now, with the end recorded: until then a re-run may still need them.
        for artifact_id in obsolete or []:
            ctx.store.delete(artifact_id)
        outcomes.forget(root, ctx.job_id)
        return state
    with db.session() as s:
        now_state = s.scalar(select(JobRecord.state).where(JobRecord.id == ctx.job_id))
    if now_state in TERMINAL:  # another worker recorded the kept outcome (or ended it) first
        outcomes.forget(root, ctx.job_id)
        return now_state
    # Taken over while the database was away: the kept outcome stays for the next claim.
    log.warning("job %s: its claim was taken over before its end could be recorded", ctx.job_id)
    return "lost"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def retry(task, job_id: str, exc: BaseException, settings: Settings):
    """Retry after a transient error with capped exponential backoff and full jitter."""
    n = task.request.retries or 0
    if n >= settings.max_retries:
        log.error("job %s: giving up after %d retries: %s", job_id, n, exc)
        try:
            with db.session() as s:
                now = utcnow()
                s.execute(update(JobRecord).where(JobRecord.id == job_id, JobRecord.state.in_(("queued", "running")))
                          .values(state="failed", stage="failed", finished_at=now, updated_at=now,
                                  run_token=None, heartbeat_at=None,
                                  error=f"gave up after {n} retries on connection errors: {readable(exc)}"))
        except Exception:
            log.exception("job %s: could not record the failure", job_id)
        return exc
    countdown = random.uniform(0.5, 1.0) * min(settings.retry_backoff_max, 2 ** n)
    return task.retry(exc=exc, countdown=countdown, max_retries=settings.max_retries, throw=False)


def storage_retry(task, exc: BaseException, settings: Settings):
    """Backoff for storage errors: from 2-4 s (an operator fixing a mount needs a moment)."""
    n = task.request.retries or 0
    countdown = random.uniform(0.5, 1.0) * min(settings.retry_backoff_max, 2 ** (n + 2))
    return task.retry(exc=exc, countdown=countdown, max_retries=settings.storage_retries, throw=False)


def defer(task, job_id: str, queue: str | None, settings: Settings) -> None:
    """Re-queue this delivery to look again later: the job is live on another worker.

    A fresh message (not task.retry) so deferrals do not use up the transient-error retries.
    The delay stays below the visibility timeout, or Redis would hand the delayed message out
    a second time while it waits.
    """
    delay = max(1.0, min(settings.lease_seconds, settings.visibility_timeout / 2))
    task.apply_async(args=(job_id,), task_id=job_id, queue=queue, countdown=delay,
                     priority=PRIORITY_DEFERRED)
    log.info("job %s is running elsewhere; looking again in %.0f s", job_id, delay)
