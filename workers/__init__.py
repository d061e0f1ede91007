"""Jobs on Celery workers: the Celery app, tasks, job records, artifact store and job API.

Imports Celery and SQLAlchemy, never torch at import time (handlers import the library when a
job runs), so the gateway can use the job API without the ML stack.
"""

from .artifacts import Artifact, ArtifactNotFound, ArtifactStore, default_store
from .jobs import (
    BrokerUnavailable,
    Job,
    JobEvent,
    JobNotFound,
    cancel,
    events,
    get,
    health,
    list_jobs,
    submit,
    wait,
)
from .migrations import upgrade_database
from .params import InvalidParams
from .settings import Settings, get_settings, reset_settings
from .worker import ping_local_workers, run_embedded_worker, run_worker, start_worker_process

__all__ = [
    "Artifact",
    "ArtifactNotFound",
    "ArtifactStore",
    "BrokerUnavailable",
    "InvalidParams",
    "Job",
    "JobEvent",
    "JobNotFound",
    "Settings",
    "cancel",
    "default_store",
    "events",
    "get",
    "get_settings",
    "health",
    "list_jobs",
    "ping_local_workers",
    "reset_settings",
    "run_embedded_worker",
    "run_worker",
    "start_worker_process",
    "submit",
    "upgrade_database",
    "wait",
]
