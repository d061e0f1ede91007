"""The single-machine set-up: no broker URL, so kombu's SQLAlchemy transport on a SQLite file,
and job records in SQLite too. Nothing but files under MCVAE_DATA_DIR."""

from __future__ import annotations

import signal

import pytest

import workers

from .conftest import assert_progress_rose, tiny_train_params, wait_for, watch

pytestmark = pytest.mark.slow


def test_jobs_run_and_survive_a_worker_restart_on_the_embedded_broker(service_env, start_worker, store_dataset):
    env = service_env()
    settings = workers.get_settings()
    assert settings.embedded and settings.broker.startswith("sqla+sqlite:///")
    assert settings.database.startswith("sqlite:///")
    dataset = store_dataset()
    first = start_worker(env, "embedded")

    job = workers.submit("train", tiny_train_params(dataset, epochs=15, checkpoint_every=10))
    final, seen = watch(job.id, 120)
    assert final.state == "succeeded", final.error
    assert_progress_rose(job.id, seen)
    assert final.worker == first.hostname

    # This transport does not hand out again a message its dead worker had taken; the next
    # worker to start finds the orphaned job in the records and re-queues it.
    long = workers.submit("train", tiny_train_params(dataset, epochs=60, checkpoint_every=20))
    wait_for(lambda: any(e.message.startswith("checkpoint at step")
                         for e in workers.events(long.id)), 120, 0.1, "a checkpoint")
    first.kill(signal.SIGKILL)
    start_worker(env, "restarted")
    resumed, seen = watch(long.id, 120)
    assert resumed.state == "succeeded", resumed.error
    assert seen == sorted(seen)
    assert resumed.attempts == 2 and resumed.metrics["resumed_from"] >= 20
    assert settings.broker.endswith("broker.sqlite") and (settings.data_dir / "broker.sqlite").is_file()
