"""runner.execute with a stand-in for the Celery task: which failures retry, which do not,
and what a duplicate delivery does. Job records on SQLite; no broker traffic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy.exc

import workers
from workers import handlers, runner
from workers.context import Outcome
from workers.queues import PRIORITY_DEFERRED


class FakeTask:
    """Records what execute asks of Celery: retries and re-queued (deferred) copies."""

    def __init__(self, retries: int = 0):
        self.request = SimpleNamespace(retries=retries, hostname="fake@test")
        self.retried: list[dict] = []
        self.deferred: list[dict] = []

    def retry(self, exc, countdown, max_retries, throw):
        self.retried.append({"exc": exc, "countdown": countdown, "max_retries": max_retries})
        return RuntimeError("Retry")  # stands in for celery.exceptions.Retry

    def apply_async(self, **kwargs):
        self.deferred.append(kwargs)


@pytest.fixture
def job(service_env):
    service_env(MCVAE_RETRY_BACKOFF_MAX="8")
    return workers.submit("sample", {"model": "model-abc", "n": 2})


def _handler(monkeypatch, *effects):
    """Install a sample handler that raises or returns each effect in turn."""
    effects = list(effects)

    def handler(ctx, params):
        ctx.progress(0.5, "sampling", force=True)
        effect = effects.pop(0)
        if isinstance(effect, BaseException):
            raise effect
        return effect

    monkeypatch.setitem(handlers.HANDLERS, "sample", handler)


def test_connection_errors_are_retried_with_backoff_and_the_retry_resumes(monkeypatch, job):
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    _handler(monkeypatch, lost, Outcome(metrics={"ok": 1}, artifacts=["output-x"]))
    task = FakeTask()
    with pytest.raises(RuntimeError, match="Retry"):
        runner.execute(task, job.id, "sample")
    [retry] = task.retried
    assert retry["exc"] is lost and 0.5 <= retry["countdown"] <= 1.0
    waiting = workers.get(job.id)
    # Nothing runs it until the retry: queued again (a cancellation would end it at once).
    assert (waiting.state, waiting.stage, waiting.attempts) == ("queued", "waiting to retry", 1)

    # The retried delivery takes the released job at once (no lease to wait out).
    assert runner.execute(FakeTask(retries=1), job.id, "sample") == "succeeded"
    done = workers.get(job.id)
    assert (done.state, done.attempts, done.metrics, done.artifacts) == ("succeeded", 2, {"ok": 1}, ["output-x"])


def test_backoff_grows_to_its_cap_and_then_the_job_fails(monkeypatch, job):
    lost = ConnectionError("broker gone")
    _handler(monkeypatch, lost)
    task = FakeTask(retries=5)
    with pytest.raises(RuntimeError):
        runner.execute(task, job.id, "sample")
    assert 4 <= task.retried[0]["countdown"] <= 8  # 2**5 capped at MCVAE_RETRY_BACKOFF_MAX=8

    _handler(monkeypatch, lost)
    with pytest.raises(ConnectionError):
        runner.execute(FakeTask(retries=workers.get_settings().max_retries), job.id, "sample")
    failed = workers.get(job.id)
    assert failed.state == "failed" and "gave up after 8 retries" in failed.error


@pytest.mark.parametrize("error", [ValueError("n: too many"), workers.ArtifactNotFound("no artifact 'model-abc'")])
def test_bad_input_fails_without_retry(monkeypatch, job, error):
    _handler(monkeypatch, error)
    task = FakeTask()
    assert runner.execute(task, job.id, "sample") == "failed"
    failed = workers.get(job.id)
    assert (failed.state, failed.attempts, failed.error) == ("failed", 1, error.args[0])
    assert task.retried == [] and failed.progress == 0.5


def test_unexpected_errors_fail_the_job_and_reach_the_worker_log(monkeypatch, job):
    _handler(monkeypatch, ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):
        runner.execute(FakeTask(), job.id, "sample")
    assert workers.get(job.id).error == "internal error (ZeroDivisionError): division by zero"


def test_a_duplicate_delivery_of_a_live_job_defers_itself(monkeypatch, job):
    settings = workers.get_settings()
    runner.claim(job.id, "live@test", settings)  # another worker is running it
    task = FakeTask()
    assert runner.execute(task, job.id, "sample") == "deferred"
    [copy] = task.deferred
    assert copy == {"args": (job.id,), "task_id": job.id, "queue": "cpu", "priority": PRIORITY_DEFERRED,
                    "countdown": min(settings.lease_seconds, settings.visibility_timeout / 2)}
    assert workers.get(job.id).worker == "live@test"  # untouched


def test_the_soft_time_limit_ends_a_step_loop_even_if_the_signal_is_lost(monkeypatch, service_env):
    # Celery's soft limit is a signal; one that strikes inside a database driver can be swallowed.
    # The run's own deadline, checked by should_stop() at every step, still ends the job cleanly.
    service_env(MCVAE_SOFT_TIME_LIMIT="1", MCVAE_TIME_LIMIT="30")
    job = workers.submit("sample", {"model": "model-abc", "n": 2})
    steps = []

    def endless(ctx, params):
        while not ctx.should_stop():
            steps.append(1)
            ctx.progress(0.1, "sampling")
        return Outcome()

    monkeypatch.setitem(handlers.HANDLERS, "sample", endless)
    assert runner.execute(FakeTask(), job.id, "sample") == "failed"
    failed = workers.get(job.id)
    assert (failed.state, failed.attempts) == ("failed", 1)
    assert failed.error == "time limit of 1 s exceeded (MCVAE_SOFT_TIME_LIMIT)"
    assert len(steps) > 10  # it ran until the deadline, not stopped at once


def test_a_database_error_caused_by_the_soft_limit_is_not_tolerated(monkeypatch, job):
    from celery.exceptions import SoftTimeLimitExceeded

    ctx = runner.RecordedContext(job.id, runner.claim(job.id, "w@test", workers.get_settings()),
                                 workers.ArtifactStore(workers.get_settings().artifacts), workers.get_settings())
    broken = sqlalchemy.exc.OperationalError("UPDATE jobs", {}, Exception("interrupted"))
    broken.__cause__ = SoftTimeLimitExceeded()
    with pytest.raises(sqlalchemy.exc.OperationalError), ctx._tolerating("progress update"):
        raise broken
    with ctx._tolerating("progress update"):  # a plain blip is still skipped
        raise sqlalchemy.exc.OperationalError("UPDATE jobs", {}, Exception("server closed the connection"))
