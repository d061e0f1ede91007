"""Gateway settings, read from the environment (prefix ``MCVAE_``, like the workers').

Where jobs, records and artifacts live is the workers' ``Settings`` (one deployment, one
description); this adds only what the HTTP front needs: upload limits, rate limits and the
thresholds between synchronous and queued answers.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import ByteSize, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.sources import MAX_COMPRESSION_RATIO

GiB = 1 << 30


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MCVAE_", extra="ignore")

    # -- uploads --------------------------------------------------------------------------------
    max_upload_bytes: int = Field(2 * GiB, ge=1, description="largest archive accepted (413 above)")
    max_archive_files: int = Field(20_000, ge=1, description="most members an archive may hold")
    max_unpacked_bytes: int = Field(16 * GiB, ge=1, description="largest total unpacked size")
    # Why 100: workers/sources.py (scans deflate 3-6:1, zeros 1000:1).
    max_compression_ratio: float = Field(MAX_COMPRESSION_RATIO, ge=1, description="unpacked over packed bytes (413 above)")

    # -- clients --------------------------------------------------------------------------------
    rate_limit_per_minute: float = Field(600.0, gt=0, description="sustained requests per key")
    rate_limit_burst: int = Field(120, ge=1, description="requests a key may make at once")
    # Verified keys are remembered this long, so a busy client costs no database read per
    # request; a revocation takes effect in other processes after at most this delay.
    key_cache_seconds: float = Field(10.0, ge=0)
    # Failed key checks (wrong, unknown, revoked or malformed keys) per client address: past
    # these, 429 before any database lookup, so guessing keys costs the guesser, not the service.
    auth_failures_per_minute: float = Field(20.0, gt=0, description="failed key checks per client address (429 above)")
    metrics_public: bool = Field(False, description="serve /metrics without a key (scrape network)")
    # /metrics counts every lab's jobs: with this set, only this token reads it (lab keys: 403).
    metrics_key: SecretStr | None = Field(None, description="operator's bearer token for /metrics")

    # -- per-lab quotas (service/quota.py): off unless set -----------------------------------------
    # Bytes one lab's datasets, upload copies, models, outputs, reports and checkpoints may hold
    # together (an int, or with units: '50GiB', '500MB'). Past it: an upload 413, a job 422.
    lab_storage_quota: ByteSize | None = Field(None, ge=1, description="bytes one lab may hold (off: unset)")
    # Queued plus running jobs of one lab: past it a new job is 429 with Retry-After, so one lab
    # cannot fill the queue ahead of the others.
    lab_max_active_jobs: int | None = Field(None, ge=1, description="queued+running jobs per lab (off: unset)")
    quota_retry_seconds: int = Field(30, ge=1, description="Retry-After of a 429 past MCVAE_LAB_MAX_ACTIVE_JOBS")

    # -- jobs -----------------------------------------------------------------------------------
    sync_sample_max: int = Field(16, ge=1, description="largest n answered with scans, not a job")
    sync_timeout_seconds: float = Field(120.0, gt=0, description="then a 202 with the job instead")
    max_wait_seconds: float = Field(300.0, ge=0, description="cap on ?wait= of an upload")
    job_poll_seconds: float = Field(0.02, gt=0, description="how often waiting requests look")
    sse_poll_seconds: float = Field(0.5, gt=0, description="how often an event stream looks")
    sse_keepalive_seconds: float = Field(15.0, gt=0)
    max_synthetic_per_class: int = Field(10_000, ge=1, description="as models.targets")

    log_level: str = "INFO"


@lru_cache(maxsize=1)
def get_service_settings() -> ServiceSettings:
    return ServiceSettings()
