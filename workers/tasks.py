"""Celery tasks: one per job kind, each a shell around ``runner.execute``.

A task's only argument is the job id (its params live in the job record), and the Celery task
id equals the job id, so revoking, deduplicating and tracing all use one identifier.
"""

from __future__ import annotations

from celery import shared_task

from .queues import task_name
from .runner import execute

# Celery's recipe for long idempotent tasks: acknowledge after the work, give the message back
# if the worker process dies. Retries are decided in runner.execute (transient errors only).
OPTIONS = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}


@shared_task(name=task_name("ingest"), **OPTIONS)
def ingest(self, job_id: str) -> str:
    """Validate an uploaded cohort and store it as a dataset artifact."""
    return execute(self, job_id, "ingest")


@shared_task(name=task_name("train"), **OPTIONS)
def train(self, job_id: str) -> str:
    """Train one model, checkpointing as it goes; resumes from the last checkpoint."""
    return execute(self, job_id, "train")


@shared_task(name=task_name("sample"), **OPTIONS)
def sample(self, job_id: str) -> str:
    """Draw synthetic scans from a trained model."""
    return execute(self, job_id, "sample")


@shared_task(name=task_name("augment"), **OPTIONS)
def augment(self, job_id: str) -> str:
    """Train per minority class, sample to the requested balance, package the result."""
    return execute(self, job_id, "augment")


@shared_task(name=task_name("evaluate"), **OPTIONS)
def evaluate(self, job_id: str) -> str:
    """Held-out log-likelihood of a trained model."""
    return execute(self, job_id, "evaluate")
