"""A job that finishes while the job database is unreachable is recorded once, and nothing of it
runs again: real workers (Redis, PostgreSQL) whose database connections go through a TCP proxy
the test cuts, so the shared PostgreSQL keeps running for everyone else."""

from __future__ import annotations

import signal
import time

import pytest

import workers
from bench.tcp_proxy import TcpProxy
from workers import outcomes

from .conftest import tiny_train_params, wait_for

pytestmark = pytest.mark.slow

LONG = {"epochs": 100, "checkpoint_every": 20}  # 600 steps: several seconds


@pytest.fixture
def database_proxy(postgres_url):
    host_port = postgres_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    try:
        yield proxy
    finally:
        proxy.close()


def _events(job_id: str):
    return workers.events(job_id)


def _runs(job_id: str) -> list[str]:
    return [e.message for e in _events(job_id) if e.message.startswith(("started (", "resumed ("))]


def _two_workers_behind_the_proxy(redis_deployment, start_worker, database_proxy, postgres_url):
    # This process (the test, like the gateway) reaches the database directly; the workers only
    # through the proxy. Every worker looks for stranded jobs every second; lease 3 s (FAST).
    env = redis_deployment(MCVAE_RECOVERY_INTERVAL="1")
    behind = {**env, "MCVAE_DATABASE_URL": database_proxy.url_for(postgres_url)}
    pair = [start_worker(behind, name, wait=False) for name in ("a", "b")]
    for worker in pair:
        worker.wait_ready()
    return {w.hostname: w for w in pair}


def _cut_as_it_ends(job_id: str, proxy: TcpProxy) -> None:
    """Cut the workers' database as the job nears its end; return once the run has finished
    and kept its outcome (it cannot record it)."""
    wait_for(lambda: workers.get(job_id).progress >= 0.6, 180, 0.02, "the job at 60 %")
    proxy.down()
    assert workers.get(job_id).state == "running"  # it had not ended before the cut
    kept = outcomes.path(workers.get_settings().artifacts, job_id)
    wait_for(kept.exists, 120, 0.05, "the run to finish and keep its outcome")


def test_a_job_ending_in_a_database_outage_is_recorded_once_by_its_own_worker(
        redis_deployment, start_worker, store_dataset, database_proxy, postgres_url):
    pair = _two_workers_behind_the_proxy(redis_deployment, start_worker, database_proxy, postgres_url)
    settings = workers.get_settings()
    job = workers.submit("train", tiny_train_params(store_dataset(), **LONG))
    _cut_as_it_ends(job.id, database_proxy)
    owner = workers.get(job.id).worker
    # Two leases more without the database: its heartbeat is long expired when it comes back,
    # and the other worker's recovery has tried (and failed) to look several times.
    time.sleep(2 * settings.lease_seconds)
    assert workers.get(job.id).state == "running"
    database_proxy.up()
    back = time.time()

    final = workers.wait(job.id, timeout=60, poll=0.1)
    assert final.state == "succeeded", final.error
    assert (final.worker, final.attempts) == (owner, 1)
    assert final.finished_at.timestamp() - back < settings.lease_seconds  # recorded soon after
    assert _runs(job.id) == ["started (attempt 1)"]  # its tail was not run again
    assert [e.stage for e in _events(job.id)].count("succeeded") == 1  # and recorded once
    assert not any("re-queued" in e.message for e in _events(job.id))
    store = workers.ArtifactStore(settings.artifacts)
    assert store.exists(final.artifacts[0]) and store.list("checkpoint", f"checkpoint-{job.id}-") == []
    wait_for(lambda: not outcomes.path(settings.artifacts, job.id).exists(), 10, 0.1, "the kept outcome removed")
    assert all(w.alive() for w in pair.values())


def test_a_worker_dying_before_it_could_record_its_end_leaves_the_outcome_to_another(
        redis_deployment, start_worker, store_dataset, database_proxy, postgres_url):
    pair = _two_workers_behind_the_proxy(redis_deployment, start_worker, database_proxy, postgres_url)
    settings = workers.get_settings()
    job = workers.submit("train", tiny_train_params(store_dataset(), **LONG))
    _cut_as_it_ends(job.id, database_proxy)
    victim = pair.pop(workers.get(job.id).worker)
    [survivor] = pair.values()
    victim.kill(signal.SIGKILL)  # while it retries recording its end
    time.sleep(1)
    database_proxy.up()
    back = time.time()

    final = workers.wait(job.id, timeout=60, poll=0.1)
    assert final.state == "succeeded", final.error
    assert final.attempts == 1 and _runs(job.id) == ["started (attempt 1)"]  # nothing re-run
    messages = [e.message for e in _events(job.id)]
    assert "its run had finished before its worker stopped; its outcome recorded, nothing re-run" in messages
    assert [e.stage for e in _events(job.id)].count("succeeded") == 1  # recorded once
    # The survivor waited a lease after getting the database back (heartbeats could not be
    # written before), then recorded the kept outcome on its next look.
    took = final.finished_at.timestamp() - back
    assert took < settings.lease_seconds + settings.recovery_interval + 3, took
    store = workers.ArtifactStore(settings.artifacts)
    assert store.exists(final.artifacts[0]) and store.list("checkpoint", f"checkpoint-{job.id}-") == []
    assert not outcomes.path(settings.artifacts, job.id).exists()
    assert survivor.alive() and "kept outcome recorded" in survivor.log()
