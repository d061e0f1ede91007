"""Stranded jobs come back: killed workers (kill -9 of the main process and its pool child),
Redis restarted empty, storage errors. Real worker processes, Redis, PostgreSQL."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

import workers
from workers.app import REDIS_RESTORE, create_app
from workers.queues import PRIORITY_STEPS

from .conftest import tiny_train_params, wait_for

pytestmark = pytest.mark.slow

LONG = {"epochs": 100, "checkpoint_every": 20}  # 600 steps: several seconds


def _messages(job_id: str) -> list[str]:
    return [e.message for e in workers.events(job_id)]


def _runs(job_id: str) -> list[str]:
    return [m for m in _messages(job_id) if m.startswith(("started (", "resumed ("))]


def _event_at(job_id: str, prefix: str) -> float:
    [at] = [e.at.timestamp() for e in workers.events(job_id) if e.message.startswith(prefix)]
    return at


def _checkpointed(job_id: str) -> bool:
    return any(m.startswith("checkpoint at step") for m in _messages(job_id))


def test_redis_restore_and_priorities_are_set_deliberately(service_env):
    settings = workers.Settings(broker_url="redis://127.0.0.1:6379/0")
    options = create_app(settings).conf.broker_transport_options
    assert {k: options[k] for k in REDIS_RESTORE} == REDIS_RESTORE
    # kombu's defaults (interval 10 s, throttle 10) scanned for expired messages every ~100 s.
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 10
    assert options["priority_steps"] == PRIORITY_STEPS and options["queue_order_strategy"] == "priority"


def test_a_worker_killed_and_back_within_10_s_takes_its_job_back_first(redis_deployment, start_worker,
                                                                       store_dataset):
    # Default lease (60 s) and visibility timeout (3600 s): neither expires during this test,
    # so only the worker's recognising its own dead run brings the job back.
    env = redis_deployment(MCVAE_LEASE_SECONDS="60", MCVAE_HEARTBEAT_SECONDS="0.5")
    assert "MCVAE_VISIBILITY_TIMEOUT" not in env
    dataset = store_dataset()
    worker = start_worker(env, "w")
    job = workers.submit("train", tiny_train_params(dataset, **LONG))
    wait_for(lambda: _checkpointed(job.id), 120, 0.05, "a first checkpoint")
    worker.kill(signal.SIGKILL)  # the main process and its pool child, at once
    killed_at = time.time()
    later = workers.submit("train", tiny_train_params(dataset, epochs=1))  # queued behind it

    # The API tells that the run has gone quiet (three missed heartbeats).
    stale = wait_for(lambda: (j := workers.get(job.id)).stale and j, 5, 0.1, "a stale heartbeat")
    assert stale.state == "running" and stale.heartbeat_at.timestamp() < killed_at
    from service import views  # the gateway's view of the job shows it too

    shown = views.job(stale, workers.ArtifactStore(workers.get_settings().artifacts))
    assert shown.stale and shown.heartbeat_at == stale.heartbeat_at

    assert time.time() - killed_at < 10
    back = start_worker(env, "w", hostname=worker.hostname)
    final = workers.wait(job.id, timeout=180, poll=0.2)
    assert final.state == "succeeded", final.error
    assert (final.worker, final.attempts) == (back.hostname, 2)
    assert len(_runs(job.id)) == 2
    assert any(m.startswith("its worker restarted; re-queued") for m in _messages(job.id))
    assert any(re.match(r"resumed from step \d+ of 600", m) for m in _messages(job.id))
    # Taken back first: the job queued after it (same queue) started only after it ended.
    second = workers.wait(later.id, timeout=120, poll=0.2)
    assert second.state == "succeeded" and second.started_at >= final.finished_at
    takeover = _event_at(job.id, "resumed (attempt 2)") - killed_at
    print(f"takeover after kill -9 with the worker back: {takeover:.1f} s")


def test_a_dead_workers_job_is_taken_over_by_another_within_the_lease(redis_deployment, start_worker,
                                                                      store_dataset):
    env = redis_deployment(MCVAE_RECOVERY_INTERVAL="1")  # lease 3 s (FAST); visibility 3600 s
    dataset = store_dataset()
    pair = {w.hostname: w for w in [start_worker(env, n, wait=False) for n in ("a", "b")]}
    for w in pair.values():
        w.wait_ready()
    job = workers.submit("train", tiny_train_params(dataset, **LONG))
    wait_for(lambda: _checkpointed(job.id), 120, 0.05, "a first checkpoint")
    victim = pair.pop(workers.get(job.id).worker)
    [survivor] = pair.values()
    victim.kill(signal.SIGKILL)  # and it never comes back
    killed_at = time.time()
    final = workers.wait(job.id, timeout=180, poll=0.2)
    assert final.state == "succeeded", final.error
    assert (final.worker, final.attempts) == (survivor.hostname, 2)
    assert len(_runs(job.id)) == 2  # run once more, not twice
    takeover = _event_at(job.id, "resumed (attempt 2)") - killed_at
    settings = workers.get_settings()
    assert takeover < settings.lease_seconds + settings.recovery_interval + 6, takeover


def test_jobs_queued_when_redis_restarts_empty_are_republished_and_run_once(
        service_env, postgres_url, private_redis, start_worker, store_dataset, demo_cohort):
    env = service_env(MCVAE_BROKER_URL=private_redis.url, MCVAE_DATABASE_URL=postgres_url,
                      MCVAE_RECOVERY_INTERVAL="1", MCVAE_PUBLISH_GRACE="1")
    dataset = store_dataset()
    start_worker(env, "w")
    running = workers.submit("train", tiny_train_params(dataset, epochs=40, checkpoint_every=20))
    wait_for(lambda: workers.get(running.id).state == "running", 60, 0.05, "the training to start")
    # Sources are upload copies, as the gateway makes them; each ingest removes its own.
    store = workers.ArtifactStore(workers.get_settings().artifacts)
    uploads = [store.put_dir("dataset", demo_cohort, artifact_id=f"dataset-upload-{i}").id for i in range(3)]
    queued = [workers.submit("ingest", {"source": upload}) for upload in uploads]
    assert {workers.get(j.id).state for j in queued} == {"queued"}

    private_redis.kill()
    private_redis.start()  # empty: the three messages are gone

    for job in [running, *queued]:
        final = workers.wait(job.id, timeout=120, poll=0.2)
        assert (final.state, final.attempts) == ("succeeded", 1), (final.state, final.error)
        assert len(_runs(job.id)) == 1
    for job in queued:
        assert "its message was lost by the broker; re-published" in _messages(job.id)
    assert not any(store.exists(upload) for upload in uploads)


def test_a_storage_error_while_checkpointing_is_retried_and_resumes(redis_deployment, start_worker,
                                                                    store_dataset):
    env = redis_deployment()
    dataset = store_dataset()
    start_worker(env, "w")
    job = workers.submit("train", tiny_train_params(dataset, **LONG))
    wait_for(lambda: _checkpointed(job.id), 120, 0.05, "a first checkpoint")
    # Unwritable even for root: the checkpoint folder is replaced by a file.
    folder = Path(workers.get_settings().artifacts) / "checkpoints"
    aside = folder.with_name("checkpoints.aside")
    folder.rename(aside)
    folder.write_text("not a folder")
    try:
        wait_for(lambda: any(m.startswith("storage error, will retry") for m in _messages(job.id)),
                 60, 0.02, "the storage error")
    finally:
        folder.unlink()
        aside.rename(folder)
    final = workers.wait(job.id, timeout=180, poll=0.2)
    assert final.state == "succeeded", final.error
    assert final.attempts == 2 and final.metrics["resumed_from"] > 0
    assert any(re.match(r"resumed from step \d+ of 600", m) for m in _messages(job.id))
    assert not (Path(workers.get_settings().artifacts) / "checkpoints.aside").exists()


def test_synchronous_sampling_goes_before_queued_ingest_and_training(redis_deployment, start_worker,
                                                                     store_dataset, demo_cohort):
    env = redis_deployment()
    dataset = store_dataset()
    start_worker(env, "w")  # one pool process: everything queues behind the running job
    model = workers.wait(workers.submit("train", tiny_train_params(dataset, epochs=1)).id, 120)
    running = workers.submit("train", tiny_train_params(dataset, epochs=40, checkpoint_every=50))
    wait_for(lambda: workers.get(running.id).state == "running", 60, 0.05, "the training to start")
    behind = [workers.submit("ingest", {"source": str(demo_cohort)}) for _ in range(2)]
    behind.append(workers.submit("train", tiny_train_params(dataset, epochs=1)))
    asked = workers.submit("sample", {"model": model.artifacts[0], "n": 1}, interactive=True)
    assert asked.queue == "interactive"
    answered = workers.wait(asked.id, 120, poll=0.1)
    assert answered.state == "succeeded", answered.error
    for job in behind:  # submitted before it, all still waiting when it ran
        waited = workers.wait(job.id, 120, poll=0.2)
        assert waited.state == "succeeded" and waited.started_at > answered.finished_at
