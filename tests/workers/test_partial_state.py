"""A job whose handler delivered less than asked ends ``partial``: terminal, its result kept,
progress full, and a client can tell it from ``succeeded`` by the state alone (issue 25)."""

from __future__ import annotations

import workers
from workers import handlers, runner
from workers.context import Outcome
from workers.records import DELIVERED, TERMINAL

from .test_runner import FakeTask


def test_a_partial_outcome_ends_the_job_partial_and_terminal(monkeypatch, service_env):
    service_env()
    job = workers.submit("sample", {"model": "model-abc", "n": 2})

    def handler(ctx, params):
        ctx.log("delivered fewer synthetic scans than asked: AD 6 of 8", "warning")
        return Outcome(metrics={"partial": True}, artifacts=["output-x"], message="made 6", state="partial")

    monkeypatch.setitem(handlers.HANDLERS, "sample", handler)
    assert runner.execute(FakeTask(), job.id, "sample") == "partial"
    done = workers.get(job.id)
    assert (done.state, done.progress, done.artifacts, done.done) == ("partial", 1.0, ["output-x"], True)
    assert "partial" in TERMINAL and "partial" in DELIVERED
    events = workers.events(job.id)
    assert any(e.level == "warning" and "AD 6 of 8" in e.message for e in events)
    assert events[-1].stage == "partial" and events[-1].message == "made 6"
