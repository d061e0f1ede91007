"""Queue names, message priorities and task names: what the Celery app, the job API, the
runner and recovery must agree on.

A leaf module (it imports nothing of ``workers``), so that every module can import it at the
top; ``app.py`` builds the Celery app from it, and the rest never need ``app.py`` for a name.
"""

from __future__ import annotations

QUEUES = ("gpu", "cpu")  # logical queue names; the broker sees settings.queue_name(...)
# Synchronous sampling: its own queue, which every worker also consumes (first) unless
# MCVAE_SERVE_INTERACTIVE=false, so that it never waits behind ingest or training messages.
INTERACTIVE = "interactive"

# One Celery task per job kind (workers/tasks.py), named task_name(kind).
TASKS = ("ingest", "train", "sample", "augment", "evaluate")

# Message priorities (Redis: 0 is served first; kombu keeps one list per step of
# PRIORITY_STEPS and a worker pops the lower steps first). A job taken over from a dead worker,
# or re-published after the broker lost it, must not queue behind work submitted after it;
# synchronous sampling has a client waiting; deferrals of duplicates can wait.
PRIORITY_STEPS = [0, 3, 6, 9]
PRIORITY_URGENT, PRIORITY_NORMAL, PRIORITY_DEFERRED = 0, 6, 9


def task_name(kind: str) -> str:
    return f"mcvae.{kind}"
