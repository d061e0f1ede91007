"""A run that finished but could not record its end keeps its outcome on the volume; whoever
finds the run dead records that outcome instead of running the job again (records and files
only, SQLite; the database outage itself, with real workers: test_database_outage.py)."""

from __future__ import annotations

import datetime as dt
import time

import pydantic
import pytest
from sqlalchemy import update

import workers
from workers import db, outcomes, recovery, runner, sweeper
from workers.records import JobRecord, utcnow

SAMPLE = {"model": "model-abc", "n": 2}


def _set(job_id: str, **values) -> None:
    with db.session() as s:
        s.execute(update(JobRecord).where(JobRecord.id == job_id).values(**values))


def _finished_run(job_id: str, token: str) -> tuple[str, str]:
    """What a run leaves when it finishes and then cannot record it: its output, a checkpoint
    the output supersedes, and the kept outcome. Returns (output id, checkpoint id)."""
    store = workers.ArtifactStore(workers.get_settings().artifacts)
    output, checkpoint = f"output-{job_id}", f"checkpoint-{job_id}-000000010"
    for artifact_id in (output, checkpoint):
        with store.writer(artifact_id.split("-")[0], artifact_id) as folder:
            (folder / "x").write_text("x")
    assert outcomes.keep(store.root, job_id, {
        "token": token, "state": "succeeded", "message": "drew 2 scans", "error": None,
        "metrics": {"n": 2}, "artifacts": [output], "obsolete": [checkpoint], "progress": None})
    return output, checkpoint


def _messages(job_id: str) -> list[str]:
    return [e.message for e in workers.events(job_id)]


def test_recovery_records_a_dead_runs_kept_outcome_instead_of_requeuing(service_env):
    service_env()
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    run = runner.claim(job.id, "w@test", settings)
    output, checkpoint = _finished_run(job.id, run.token)
    _set(job.id, heartbeat_at=utcnow() - dt.timedelta(seconds=settings.lease_seconds + 1))

    assert recovery.requeue_orphans(settings) == []  # nothing re-queued: nothing to run again
    done = workers.get(job.id)
    assert (done.state, done.progress, done.artifacts, done.metrics, done.attempts) == (
        "succeeded", 1.0, [output], {"n": 2}, 1)
    store = workers.ArtifactStore(settings.artifacts)
    assert store.exists(output) and not store.exists(checkpoint)
    assert outcomes.read(settings.artifacts, job.id) is None
    assert _messages(job.id)[-2:] == [
        "its run had finished before its worker stopped; its outcome recorded, nothing re-run", "drew 2 scans"]
    assert not runner.finish(job.id, run.token, "succeeded", "late")  # recorded once


def test_a_live_run_with_a_kept_outcome_is_left_to_record_it_itself(service_env):
    service_env()
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    run = runner.claim(job.id, "w@test", settings)
    _finished_run(job.id, run.token)
    assert recovery.requeue_orphans(settings) == []
    assert runner.claim(job.id, "other@test", settings).outcome == "busy"
    assert workers.get(job.id).state == "running"  # its heartbeat is fresh: its own run records it
    assert runner.finish(job.id, run.token, "succeeded", "drew 2 scans")


def test_a_delivery_of_a_requeued_job_records_the_kept_outcome_and_runs_nothing(service_env):
    service_env()
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    run = runner.claim(job.id, "w@test", settings)
    _set(job.id, heartbeat_at=utcnow() - dt.timedelta(seconds=settings.lease_seconds + 1))
    assert recovery.requeue_orphans(settings) == [job.id]  # taken over while it still ran...
    output, _ = _finished_run(job.id, run.token)  # ...and then it finished
    assert not runner.finish(job.id, run.token, "succeeded", "drew 2 scans")  # its claim is gone

    again = runner.claim(job.id, "other@test", settings)
    assert (again.outcome, again.reason) == ("skip", "its earlier run had finished; outcome recorded")
    done = workers.get(job.id)
    assert (done.state, done.artifacts, done.attempts) == ("succeeded", [output], 1)
    assert not any(m.startswith("resumed (") for m in _messages(job.id))


def test_after_losing_the_database_recovery_waits_a_lease_before_taking_over(service_env):
    service_env()
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    runner.claim(job.id, "w@test", settings)
    _set(job.id, heartbeat_at=utcnow() - dt.timedelta(seconds=settings.lease_seconds + 1))

    # This worker's recovery round finds the database unreachable (nothing listens there)...
    service_env(MCVAE_DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    try:
        recovery.recover()
        raise AssertionError("recover() reached a database that is not there")
    except runner.TRANSIENT:
        pass
    service_env()
    # ...so once it is back, an expired heartbeat proves nothing: the run may not have had the
    # chance to write one. After a whole lease it does.
    assert recovery.requeue_orphans(settings) == []
    assert workers.get(job.id).state == "running"
    time.sleep(settings.lease_seconds)
    assert recovery.requeue_orphans(settings) == [job.id]


def test_the_sweeper_removes_kept_outcomes_of_ended_jobs_only(service_env):
    service_env()
    settings = workers.get_settings()
    ended, running = (workers.submit("sample", SAMPLE) for _ in range(2))
    for job in (ended, running):
        _finished_run(job.id, runner.claim(job.id, "w@test", settings).token)
    _set(ended.id, state="failed", finished_at=utcnow())  # ended some other way after keeping it
    removed = sweeper.sweep()["outcomes"]
    assert removed == [f".outcomes/{ended.id}.json"]
    assert outcomes.read(settings.artifacts, running.id) is not None


def test_default_lease_takes_a_dead_workers_job_over_within_30_s_and_spans_three_heartbeats(monkeypatch):
    for name in ("MCVAE_LEASE_SECONDS", "MCVAE_HEARTBEAT_SECONDS", "MCVAE_RECOVERY_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    defaults = workers.Settings()
    # Worst case: the lease from the last heartbeat, then a recovery round (10 % jitter).
    assert defaults.lease_seconds + 1.1 * defaults.recovery_interval <= 25
    assert defaults.lease_seconds >= 4 * defaults.heartbeat_seconds  # four missed beats are survived
    with pytest.raises(pydantic.ValidationError, match="at least 3 x heartbeat_seconds"):
        workers.Settings(lease_seconds=10, heartbeat_seconds=4)
