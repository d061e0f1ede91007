"""Jobs through real worker processes over Redis, with job records on PostgreSQL."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

import workers
from workers import ArtifactStore
from workers.app import get_app

from .conftest import (
    TINY_MODEL,
    TINY_PREPROCESS,
    assert_progress_rose,
    tiny_train_params,
    wait_for,
    watch,
)

pytestmark = pytest.mark.slow

LONG = {"epochs": 100, "checkpoint_every": 20}  # 9 scans, batch 4: 600 steps, several seconds


def _messages(job_id: str) -> list[str]:
    return [e.message for e in workers.events(job_id)]


def _checkpoint_steps(messages: list[str]) -> list[int]:
    return [int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("checkpoint at step")]


def test_ingest_train_and_augment_jobs_succeed_with_rising_progress(redis_deployment, start_worker, demo_cohort):
    env = redis_deployment()
    worker = start_worker(env, "solo")

    ingest, _ = watch(workers.submit("ingest", {"source": str(demo_cohort), "name": "demo"}).id, 60)
    assert ingest.state == "succeeded", ingest.error
    assert ingest.metrics["summary"]["classes"] == {"AD": 3, "CN": 6}
    [dataset] = ingest.artifacts

    train = workers.submit("train", tiny_train_params(dataset, epochs=15, checkpoint_every=10))
    augment = workers.submit("augment", {"dataset": dataset, "target": "balance", "config": {
        "preprocess": TINY_PREPROCESS, "model": TINY_MODEL, "sampler": {"kind": "mala", "n_steps": 2},
        "train": {"batch_size": 4}, "pretrain_steps": 20, "mcmc_steps": 10, "check_steps": 10,
        # a 20-step model of 3 AD slices draws near-copies past every redraw; left out, they would make
        # the job 'partial' (tests/workers/test_partial_state.py): here the whole path must succeed
        "near_copies": "keep"}})

    trained, seen = watch(train.id, 120)
    assert trained.state == "succeeded", trained.error
    assert_progress_rose(train.id, seen)
    assert (trained.worker, trained.attempts, trained.metrics["steps"]) == (worker.hostname, 1, 90)
    store = ArtifactStore(workers.get_settings().artifacts)
    assert trained.artifacts == [f"model-{train.id}"] and store.verify(trained.artifacts[0])

    augmented, seen = watch(augment.id, 180)
    assert augmented.state == "succeeded", augmented.error
    assert_progress_rose(augment.id, seen)
    assert augmented.metrics["synthetic_counts"] == {"AD": 3, "CN": 0}
    output = store.path(augmented.artifacts[0])
    assert (output / "manifest.csv").read_text().count(",true") == 3
    assert len(augmented.artifacts) == 2 and store.exists(augmented.artifacts[1])  # the AD model

    # The worker logs JSON lines (one object each), like the gateway.
    lines = [line for line in worker.log().splitlines() if line.startswith("{")]
    assert len(lines) > 3
    parsed = [json.loads(line) for line in lines]
    assert all({"at", "level", "logger", "message"} <= set(p) for p in parsed)
    assert any("ready." in p["message"] for p in parsed)


def test_training_resumes_from_its_checkpoint_after_its_worker_is_killed(redis_deployment, start_worker, store_dataset):
    # A short visibility timeout so Redis also hands the killed worker's message out again soon.
    env = redis_deployment(MCVAE_VISIBILITY_TIMEOUT="10")
    dataset = store_dataset()
    first = start_worker(env, "first")
    job = workers.submit("train", tiny_train_params(dataset, **LONG))
    wait_for(lambda: max(_checkpoint_steps(_messages(job.id)), default=0) >= 40, 120, 0.05,
             "a checkpoint at step 40")
    first.kill(signal.SIGKILL)
    at_kill = workers.get(job.id)
    assert at_kill.state == "running" and at_kill.progress < 0.9, at_kill
    before = _checkpoint_steps(_messages(job.id))

    second = start_worker(env, "second")
    final = workers.wait(job.id, timeout=180, poll=0.2)
    assert final.state == "succeeded", final.error
    assert (final.worker, final.attempts) == (second.hostname, 2)

    messages = _messages(job.id)
    resumed = [m for m in messages if m.startswith("resumed from step")]
    assert len(resumed) == 1, messages
    step = int(re.match(r"resumed from step (\d+) of 600", resumed[0]).group(1))
    # The newest checkpoint the first worker logged (or one it wrote just before dying).
    assert step in (before[-1], before[-1] + 20), (step, before)
    assert final.metrics["resumed_from"] == step and final.metrics["steps"] == 600
    after = _checkpoint_steps(messages[messages.index(resumed[0]):])
    assert after and min(after) > step  # nothing before the checkpoint was redone
    epochs = [r["epoch"] for r in final.metrics["history"]]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 200  # no epoch recorded twice
    assert "resumed (attempt 2)" in messages  # who resumed it is the record's (above), not the events'
    assert not any(second.hostname in m or "@" in m for m in messages)
    store = ArtifactStore(workers.get_settings().artifacts)
    assert store.verify(f"model-{job.id}") and store.list("checkpoint", f"checkpoint-{job.id}") == []


def test_cancel_before_start_and_during_training(redis_deployment, start_worker, store_dataset):
    env = redis_deployment()
    dataset = store_dataset()
    early = workers.submit("train", tiny_train_params(dataset))
    assert workers.cancel(early.id).state == "cancelled"  # no worker running yet

    worker = start_worker(env, "w")
    job = workers.submit("train", tiny_train_params(dataset, **LONG))
    wait_for(lambda: _checkpoint_steps(_messages(job.id)), 120, 0.05, "a first checkpoint")
    assert workers.cancel(job.id).state == "running"  # asked; it stops at its next step
    final = workers.wait(job.id, timeout=30, poll=0.1)
    assert final.state == "cancelled" and final.progress < 1 and final.finished_at
    last = _messages(job.id)[-1]
    match = re.match(r"cancelled: stopped at step (\d+); last checkpoint at step (\d+)", last)
    assert match, last
    kept = ArtifactStore(workers.get_settings().artifacts).list("checkpoint", f"checkpoint-{job.id}")
    assert kept and kept[-1].endswith(f"{int(match.group(2)):09d}")

    # The job cancelled while queued never started; its message was dropped on arrival.
    never = workers.get(early.id)
    assert (never.state, never.attempts, never.started_at, never.worker) == ("cancelled", 0, None, None)
    wait_for(lambda: f"job {early.id}: already cancelled" in worker.log(), 30, 0.2, "the dropped message")
    # Nothing left running on the worker.
    active = get_app().control.inspect([worker.hostname], timeout=5).active()
    assert active == {worker.hostname: []}, active


def test_bad_input_fails_once_with_a_readable_error(redis_deployment, start_worker, store_dataset):
    env = redis_deployment(MCVAE_SOFT_TIME_LIMIT="4", MCVAE_TIME_LIMIT="20")
    dataset = store_dataset()
    start_worker(env, "w")
    bad_config = workers.submit("train", {**tiny_train_params(dataset), "model": {"arch": "mlp", "latent_dims": [0]}})
    bad_class = workers.submit("train", tiny_train_params(dataset, label="MCI"))
    too_long = workers.submit("train", tiny_train_params(dataset, epochs=1000))
    for job, message in ((bad_config, "model.latent_dims: latent_dims entries must be positive"),
                         (bad_class, "no scans of class 'MCI' (classes: AD, CN)"),
                         (too_long, "time limit of 4 s exceeded (MCVAE_SOFT_TIME_LIMIT)")):
        final = workers.wait(job.id, timeout=60, poll=0.1)
        assert (final.state, final.attempts) == ("failed", 1), final
        assert message in final.error
    time.sleep(2)  # a retry, if there were one, would have started by now
    for job in (bad_config, bad_class, too_long):
        final = workers.get(job.id)
        assert (final.state, final.attempts) == ("failed", 1)
        assert sum(m.startswith(("started (", "resumed (")) for m in _messages(job.id)) == 1


def test_two_workers_on_one_queue_share_the_jobs(redis_deployment, start_worker, store_dataset):
    env = redis_deployment()
    dataset = store_dataset()
    pair = [start_worker(env, name, queues=("gpu",), wait=False) for name in ("a", "b")]
    for worker in pair:
        worker.wait_ready()
    status = workers.health(timeout=2)
    assert status["database"] and status["broker"]
    assert set(status["workers"]) == {w.hostname for w in pair}
    assert set(workers.ping_local_workers(timeout=2)) == {w.hostname for w in pair}
    jobs = [workers.submit("train", tiny_train_params(dataset, epochs=6)) for _ in range(4)]
    finals = [workers.wait(job.id, timeout=120, poll=0.2) for job in jobs]
    assert [f.state for f in finals] == ["succeeded"] * 4, [f.error for f in finals]
    assert {f.worker for f in finals} == {w.hostname for w in pair}
