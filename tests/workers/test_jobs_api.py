"""The job API and job records on SQLite (the embedded set-up): no worker involved.

Worker-side state changes (claims, heartbeats, progress) are driven here through the runner's
own functions, as a worker would call them.
"""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import update

import workers
from workers import db
from workers.artifacts import ArtifactStore
from workers.records import Base, JobRecord, utcnow
from workers.runner import RecordedContext, claim, finish

SAMPLE = {"model": "model-abc", "n": 4}


@pytest.fixture
def embedded(service_env):
    return service_env()  # no broker URL, no database URL: SQLite files under a temp folder


def _age_heartbeat(job_id: str, seconds: float = 3600) -> None:
    with db.session() as s:
        s.execute(update(JobRecord).where(JobRecord.id == job_id).values(
            heartbeat_at=utcnow() - dt.timedelta(seconds=seconds)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_create_exactly_the_declared_schema(request, tmp_path, backend):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    workers.upgrade_database(url)
    workers.upgrade_database(url)  # a second run (another process starting) is a no-op
    eng = db.engine(url)
    with eng.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "mcvae_workers_version"})
        assert compare_metadata(ctx, Base.metadata) == []
    db.dispose_engines()


def test_submit_rejects_bad_input_naming_the_field(embedded):
    cases = [
        ("transmogrify", {}, "kind: unknown job kind"),
        ("sample", {"model": "model-abc", "n": 10_001}, "n: at most 10000"),
        ("sample", {"model": "model-abc", "n": 0}, "n: Input should be greater than or equal to 1"),
        ("sample", {"model": "dataset-abc"}, "model: expected a model artifact id"),
        ("train", {"dataset": "dataset-x", "train": {"device": "cuda"}}, "train: device is chosen by the worker"),
        ("train", {"dataset": "dataset-x", "learning_rate": 1}, "learning_rate: Extra inputs are not permitted"),
        ("evaluate", {"model": "model-a"}, "dataset: Field required"),
        ("ingest", None, "source: Field required"),
    ]
    for kind, params, message in cases:
        with pytest.raises(ValueError, match=message):
            workers.submit(kind, params)
    assert workers.list_jobs() == []  # nothing recorded for rejected input


def test_submit_records_a_queued_job_and_owners_see_only_their_own(embedded):
    a = workers.submit("sample", SAMPLE, owner="lab-a")
    big = workers.submit("sample", {**SAMPLE, "n": 5000}, owner="lab-a")
    b = workers.submit("train", {"dataset": "dataset-x"}, owner="lab-b")
    assert (a.state, a.stage, a.progress, a.attempts, a.queue) == ("queued", "queued", 0.0, 0, "cpu")
    assert big.queue == "gpu" and b.queue == "gpu"  # large sampling and training go to GPUs
    assert a.params == {"model": "model-abc", "n": 4, "seed": 0, "batch_size": 256, "label": None}  # defaults filled in
    assert workers.get(a.id, owner="lab-a").id == a.id
    with pytest.raises(workers.JobNotFound):
        workers.get(a.id, owner="lab-b")
    with pytest.raises(workers.JobNotFound):
        workers.cancel(a.id, owner="lab-b")
    with pytest.raises(workers.JobNotFound):
        workers.events(a.id, owner="lab-b")
    assert [j.id for j in workers.list_jobs(owner="lab-a")] == [big.id, a.id]
    assert [j.id for j in workers.list_jobs(kind="train")] == [b.id]
    assert [j.id for j in workers.list_jobs(limit=1, offset=1)] == [big.id]
    assert workers.list_jobs(state="running") == []
    with pytest.raises(ValueError, match="state: expected one of"):
        workers.list_jobs(state="paused")
    [event] = workers.events(a.id)
    assert event.message == "queued on cpu" and event.stage == "queued"


def test_cancel_before_start_is_immediate_and_final(embedded):
    job = workers.submit("sample", SAMPLE)
    cancelled = workers.cancel(job.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None
    assert workers.cancel(job.id).finished_at == cancelled.finished_at  # idempotent
    settings = workers.get_settings()
    got = claim(job.id, "w1@test", settings)  # the message arrives at a worker later
    assert got.outcome == "skip" and got.reason == "already cancelled"
    assert workers.get(job.id).attempts == 0
    assert [e.message for e in workers.events(job.id)] == ["queued on cpu", "cancelled before it started"]


def test_claims_are_exclusive_and_a_stale_run_is_taken_over(embedded):
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    first = claim(job.id, "w1@test", settings)
    assert first.outcome == "run" and first.attempt == 1
    assert claim(job.id, "w2@test", settings).outcome == "busy"  # a duplicate delivery
    running = workers.get(job.id)
    assert (running.state, running.worker, running.attempts) == ("running", "w1@test", 1)

    _age_heartbeat(job.id)  # w1 died: its heartbeat stops
    second = claim(job.id, "w2@test", settings)
    assert second.outcome == "run" and second.attempt == 2
    assert not finish(job.id, first.token, "succeeded", "late")  # the old run cannot finish it
    assert finish(job.id, second.token, "succeeded", "done", metrics={"x": float("nan")})
    done = workers.get(job.id)
    assert (done.state, done.worker, done.progress, done.metrics) == ("succeeded", "w2@test", 1.0, {"x": None})
    assert claim(job.id, "w3@test", settings).reason == "already succeeded"
    messages = [e.message for e in workers.events(job.id)]
    # No node name in what a lab reads: the record's ``worker`` says who ran it.
    assert messages == ["queued on cpu", "started (attempt 1)", "resumed (attempt 2)", "done"]


def test_running_job_is_asked_to_stop_and_progress_never_falls(embedded, tmp_path):
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    got = claim(job.id, "w1@test", settings)
    ctx = RecordedContext(job.id, got, ArtifactStore(tmp_path / "store"), settings)
    ctx.progress(0.5, "sampling", force=True)
    ctx.progress(0.3, "sampling", force=True)  # e.g. a stage restarted after a resume
    assert workers.get(job.id).progress == 0.5
    assert not ctx.should_stop()

    requested = workers.cancel(job.id)
    assert requested.state == "running" and requested.cancel_requested
    ctx._last_poll = 0  # do not wait for the poll interval
    assert ctx.should_stop()
    assert finish(job.id, got.token, "cancelled", "cancelled: stopped")
    progress = [e.progress for e in workers.events(job.id) if e.progress is not None]
    assert progress == sorted(progress)


def test_cancel_is_asked_once_and_a_cancel_after_the_end_changes_nothing(embedded):
    """Issue 23 item 8: a second cancel, while the job stops or after it ended, answers the job as
    it is and adds no "cancellation requested" (which used to land after "cancelled")."""
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    got = claim(job.id, "w1@test", settings)
    first, second = workers.cancel(job.id), workers.cancel(job.id)
    assert first.cancel_requested and (second.state, second.cancel_requested) == ("running", True)
    assert finish(job.id, got.token, "cancelled", "cancelled: stopped")
    ended = workers.get(job.id)
    again = workers.cancel(job.id)
    assert again == ended  # nothing touched, not even updated_at
    messages = [e.message for e in workers.events(job.id)]
    assert messages == ["queued on cpu", "started (attempt 1)",
                        "cancellation requested; stopping at the next step", "cancelled: stopped"]


def test_cancel_of_a_job_whose_worker_died_ends_it(embedded):
    job = workers.submit("sample", SAMPLE)
    claim(job.id, "w1@test", workers.get_settings())
    _age_heartbeat(job.id)
    assert workers.cancel(job.id).state == "cancelled"


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(service_env):
    service_env(MCVAE_MAX_ATTEMPTS="2")
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    for _ in range(2):
        assert claim(job.id, "w@test", settings).outcome == "run"
        _age_heartbeat(job.id)
    assert claim(job.id, "w@test", settings).outcome == "skip"
    failed = workers.get(job.id)
    assert failed.state == "failed" and "gave up after 2 attempts" in failed.error


def test_a_multi_lab_gateway_can_refuse_paths_on_the_workers(service_env):
    service_env(MCVAE_ALLOW_PATH_SOURCES="false")
    with pytest.raises(ValueError, match="source: expected the artifact id of an upload"):
        workers.submit("ingest", {"source": "/etc"})
    assert workers.submit("ingest", {"source": "dataset-upload1"}).state == "queued"


def test_wait_times_out_with_the_state(embedded):
    job = workers.submit("sample", SAMPLE)
    with pytest.raises(TimeoutError, match="still queued"):
        workers.wait(job.id, timeout=0.2, poll=0.05)
