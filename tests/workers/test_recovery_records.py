"""Recovery decisions on the job records alone (SQLite, no worker): which running jobs are
orphaned, that only one caller re-queues each, and that a live run is never touched."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import update

import workers
from workers import db, recovery, runner
from workers.records import JobRecord, utcnow

SAMPLE = {"model": "model-abc", "n": 2}


def _set(job_id: str, **values) -> None:
    with db.session() as s:
        s.execute(update(JobRecord).where(JobRecord.id == job_id).values(**values))


def test_an_expired_heartbeat_puts_the_job_back_once(service_env):
    service_env()
    settings = workers.get_settings()
    live, dead = (workers.submit("sample", SAMPLE) for _ in range(2))
    runner.claim(live.id, "w1@test", settings)
    lost = runner.claim(dead.id, "w2@test", settings)
    _set(dead.id, heartbeat_at=utcnow() - dt.timedelta(seconds=settings.lease_seconds + 1))
    assert workers.get(dead.id).stale and not workers.get(live.id).stale

    assert recovery.requeue_orphans(settings) == [dead.id]
    back = workers.get(dead.id)
    assert (back.state, back.stage, back.attempts, back.heartbeat_at) == ("queued", "waiting for a worker", 1, None)
    assert recovery.requeue_orphans(settings) == []  # nobody re-queues it twice
    assert workers.get(live.id).state == "running"
    assert not runner.finish(dead.id, lost.token, "succeeded", "late")  # the dead run cannot end it
    again = runner.claim(dead.id, "w3@test", settings)
    assert again.outcome == "run" and again.attempt == 2
    messages = [e.message for e in workers.events(dead.id)]
    requeued = (f"its worker stopped (no heartbeat for over {settings.lease_seconds:g} s); "
                "re-queued to resume on another worker")
    assert messages[-2:] == [requeued, "resumed (attempt 2)"]
    assert not any("@test" in m for m in messages)  # node names stay in the logs and the record


def test_a_worker_back_under_its_name_takes_its_previous_run_but_not_its_own(service_env):
    service_env()
    settings = workers.get_settings()
    before, mine = (workers.submit("sample", SAMPLE) for _ in range(2))
    runner.claim(before.id, "w@test", settings)
    _set(before.id, run_token="0" * 32)  # claimed by an earlier process (another boot id)
    runner.claim(mine.id, "w@test", settings)  # claimed by this process: alive
    assert recovery.requeue_orphans(settings, hostname="other@test") == []  # heartbeats are fresh
    # A duplicate delivery arriving at the restarted worker does not defer to its dead self.
    assert runner.claim(before.id, "w@test", settings).outcome == "run"
    _set(before.id, run_token="0" * 32)
    assert recovery.requeue_orphans(settings, hostname="w@test") == [before.id]
    assert workers.get(mine.id).state == "running"


def test_a_retry_after_a_storage_error_waits_queued(service_env):
    service_env()
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    got = runner.claim(job.id, "w@test", settings)
    runner.release(job.id, got.token, "storage error, will retry: [Errno 13] Permission denied")
    waiting = workers.get(job.id)
    assert (waiting.state, waiting.stage) == ("queued", "waiting to retry")
    assert recovery.requeue_orphans(settings) == []  # not running: nothing to take over
    assert workers.cancel(job.id).state == "cancelled"  # ends at once, nothing runs it


def test_a_message_held_by_a_dead_worker_counts_as_lost(redis_deployment):
    import redis

    redis_deployment(MCVAE_PUBLISH_GRACE="0")
    settings = workers.get_settings()
    job = workers.submit("sample", SAMPLE)
    assert job.id in recovery.broker_job_ids(settings) and recovery.republish_lost(settings) == []

    # A worker takes the message (it is now unacknowledged, held) and dies before starting it.
    from workers.app import get_app

    with get_app().connection_for_read() as conn:
        channel = conn.default_channel
        held = channel.basic_get(settings.queue_name("cpu"), no_ack=False)
        assert held is not None and held.headers["id"] == job.id
        assert job.id in recovery.broker_job_ids(settings)  # just taken: a live worker would start it
        client = redis.Redis.from_url(settings.broker)
        long_ago = 10 + settings.retry_backoff_max + settings.lease_seconds
        client.zadd(settings.redis_key_prefix + "unacked_index", {held.delivery_tag: time.time() - long_ago})
        client.close()
        # (inside the block: closing the channel hands its unacknowledged messages back)
        assert job.id not in recovery.broker_job_ids(settings)
        assert recovery.republish_lost(settings) == [job.id]
        assert recovery.republish_lost(settings) == []  # and only once
