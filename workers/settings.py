"""Worker and job settings, read from the environment (prefix ``MCVAE_``).

One object describes a deployment: where the broker, the job database and the artifact store
are, which queues exist, and the limits jobs run under. Unset URLs fall back to files under
``MCVAE_DATA_DIR``, so a laptop needs no server at all (the "embedded" mode).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.budget import Limits

from .queues import INTERACTIVE, QUEUES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MCVAE_", extra="ignore")

    data_dir: Path = Field(Path.home() / ".mcvae", description="root for every default location")
    broker_url: str | None = Field(
        None, description="redis://host:6379/0; unset: embedded SQLite broker under data_dir"
    )
    result_backend: str | None = Field(
        None, description="Celery result backend; unset: none (the job record is the result)"
    )
    database_url: str | None = Field(None, description="job records; unset: SQLite under data_dir")
    artifact_root: Path | None = Field(None, description="artifact store; unset: data_dir/artifacts")

    queue_prefix: str = Field("", description="prepended to the queue names gpu and cpu")
    # kombu's global_keyprefix: lets several deployments (or test runs) share one Redis.
    redis_key_prefix: str = ""
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")

    soft_time_limit: int = Field(12 * 3600, ge=1, description="seconds; the job then fails cleanly")
    time_limit: int = Field(12 * 3600 + 600, ge=1, description="seconds; the task is then killed")
    # Redis only. A message taken by a worker that dies comes back after this many seconds.
    # Shorter: faster recovery, but a job running longer than this gets a duplicate delivery,
    # which the job record's lease turns into a cheap deferral (see runner.py), not a second run.
    visibility_timeout: int = Field(3600, ge=1)
    # A running job's worker refreshes its heartbeat every heartbeat_seconds; a job whose
    # heartbeat is older than lease_seconds is considered orphaned and may be taken over. A dead
    # worker's job is taken over after about lease + recovery_interval (below): 20 + 4 s keeps
    # that under 30 s, while a run may miss four heartbeats in a row (a slow database) and keep
    # its job. The lease must span at least three heartbeats (checked below).
    heartbeat_seconds: float = Field(4.0, gt=0)
    lease_seconds: float = Field(20.0, gt=0)
    max_attempts: int = Field(5, ge=1, description="runs of one job (worker deaths, transient errors)")
    max_retries: int = Field(8, ge=0, description="retries of a task after transient errors")
    retry_backoff_max: int = Field(300, ge=1, description="seconds, cap of exponential backoff")

    # Ingest jobs may name a folder or archive on the workers' filesystem. A gateway serving
    # several labs sets this false, so that users can ingest only what they uploaded.
    allow_path_sources: bool = True
    torch_threads: int = Field(0, ge=0, description="torch threads per worker process; 0: cores / concurrency")
    checkpoint_every: int = Field(200, ge=1, description="training steps between checkpoints")
    progress_interval: float = Field(1.0, ge=0, description="min seconds between progress writes")
    max_sample_n: int = Field(10_000, ge=1, description="largest n a sampling job may ask for")
    gpu_sample_min: int = Field(512, ge=1, description="sampling jobs this large go to the gpu queue")

    # -- job size (models/budget.py): checked at submit (422) and again by the worker ------------
    # 256^3: a whole head at 1 mm (about 180 x 216 x 180) fits, 16x the research profile's grid.
    max_voxels: int = Field(256**3, ge=1, description="voxels per scan (preprocess.target_shape)")
    # 200M: weights, gradients and two Adam moments take 16 bytes each (3.2 GB); an MLP over a
    # 64^3 grid (134M) still fits, hidden widths of 1e8 do not.
    max_parameters: int = Field(200_000_000, ge=1, description="estimated parameters of one model")
    # 16 GiB: a 24 GB GPU; the research profile at batch 8 needs about 0.9 GiB, a 1 mm grid
    # (192 x 224 x 192) at batch 8 about 7.4 GiB.
    max_activation_gib: float = Field(16.0, gt=0, description="estimated activation memory per batch")
    # 200k: 80x the research profile's 2,500 steps per model, about 12 h at 0.2 s per step.
    max_steps: int = Field(200_000, ge=1, description="optimiser steps per trained model")
    max_batch_size: int = Field(512, ge=1, description="train.batch_size")

    # -- recovery and housekeeping (workers/recovery.py, workers/sweeper.py) ------------------
    # Every worker looks at the job records this often: running jobs whose heartbeat is older
    # than lease_seconds are re-queued (taken over), queued jobs whose message the broker lost
    # are re-published. Takeover after a worker death: about lease + interval seconds.
    recovery_interval: float = Field(4.0, gt=0, description="seconds between recovery checks")
    # A queued job younger than this is never called lost: its message may be on its way.
    publish_grace: float = Field(10.0, ge=0, description="seconds")
    serve_interactive: bool = Field(True, description="every worker also takes synchronous sampling")
    sweep_interval: float = Field(600.0, gt=0, description="seconds between storage sweeps (0 < x)")
    # What the sweeper removes, and after how long (seconds). Staging of a job's run is removed
    # as soon as that run is over (its job ended or was taken over); these bound the rest.
    staging_retention: float = Field(3600.0, ge=0, description="untagged staging (gateway writes)")
    scratch_retention: float = Field(6 * 3600.0, ge=0, description="scratch folders (uploads, unpacking)")
    checkpoint_retention: float = Field(24 * 3600.0, ge=0, description="checkpoints of failed/cancelled jobs")
    upload_retention: float = Field(600.0, ge=0, description="upload copies no ingest job still needs")
    cache_retention: float = Field(24 * 3600.0, ge=0, description="preprocessing caches of deleted datasets")
    # Storage errors (PermissionError, a full or flaky volume) while checkpointing or writing
    # outputs: the job is retried this many times with backoff, resuming from its checkpoint.
    storage_retries: int = Field(5, ge=0)

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.time_limit < self.soft_time_limit:
            raise ValueError("time_limit must not be below soft_time_limit")
        if self.lease_seconds < 3 * self.heartbeat_seconds:
            raise ValueError("lease_seconds must be at least 3 x heartbeat_seconds: a run that misses "
                             "one or two heartbeats (a slow database) must keep its job")
        return self

    @property
    def job_limits(self) -> Limits:
        return Limits(max_voxels=self.max_voxels, max_parameters=self.max_parameters,
                      max_activation_bytes=int(self.max_activation_gib * (1 << 30)),
                      max_steps=self.max_steps, max_batch_size=self.max_batch_size)

    # -- resolved locations ----------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when no broker URL is set: kombu's SQLAlchemy transport on a local SQLite file."""
        return not self.broker_url

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir.expanduser() / 'broker.sqlite'}"

    @property
    def database(self) -> str:
        url = self.database_url or f"sqlite:///{self.data_dir.expanduser() / 'jobs.sqlite'}"
        # Plain postgresql:// means psycopg2 to SQLAlchemy; we ship psycopg 3.
        if url.startswith(("postgresql://", "postgres://")):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def artifacts(self) -> Path:
        return (self.artifact_root or self.data_dir / "artifacts").expanduser()

    def queue_name(self, logical: str) -> str:
        if logical not in (*QUEUES, INTERACTIVE):
            raise ValueError(f"queue: expected one of {', '.join((*QUEUES, INTERACTIVE))}, got {logical!r}")
        return f"{self.queue_prefix}{logical}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


# What was built from the settings and must be forgotten with them: the Celery app (app.py) and
# the database engines (db.py). Those modules import this one, so they register themselves.
_on_reset: list[Callable[[], object]] = []


def on_reset(forget: Callable[[], object]) -> None:
    """Have ``reset_settings`` call ``forget`` (in the order registered)."""
    _on_reset.append(forget)


def reset_settings() -> None:
    """Forget cached settings (and what was built from them) after the environment changed."""
    get_settings.cache_clear()
    for forget in _on_reset:
        forget()
