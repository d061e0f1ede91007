"""Per-lab quotas (issue 23, item 1): what one lab may hold, and how many jobs it may have going.

Storage (MCVAE_LAB_STORAGE_QUOTA): a lab holds the bytes of its jobs' artifacts (datasets,
upload copies awaiting ingest, models, outputs, reports, checkpoints), summed from the artifact
manifests by ``workers.usage.storage`` (the figure GET /v1/usage shows), so deleting a dataset
or model frees its bytes at once. The gateway checks it:

- on upload: the archive may stream in only up to the lab's room (quota less what it holds),
  and may unpack only to that room; past it the upload stops (413), its staging is removed and
  nothing the lab stored before is touched;
- on job submit: a lab at or past its quota may start no job, and a train or augment job whose
  estimated model (``models.budget.model_bytes``) would pass it is refused (422).

Workers do not re-check storage: a job's real output may take a lab somewhat past its quota
(the estimate counts one model's weights, not the synthetic scans), and then the lab's next
upload or job is refused until it deletes something. Two uploads racing may both fit; the
quota bounds each lab's growth, not its last byte.

Active jobs (MCVAE_LAB_MAX_ACTIVE_JOBS): queued plus running jobs of the lab, counted from the
job records; a new job past it is 429 with Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

import workers.usage
from workers import db as workers_db
from workers.records import JobRecord

from .errors import ApiError
from .settings import ServiceSettings

STORAGE_SETTING = "MCVAE_LAB_STORAGE_QUOTA"
ACTIVE_JOBS_SETTING = "MCVAE_LAB_MAX_ACTIVE_JOBS"
ACTIVE_STATES = ("queued", "running")


def held_bytes(lab: str) -> int:
    """What the lab's artifacts hold now (GET /v1/usage's total_bytes)."""
    return int(workers.usage.storage(lab)["total"])


@dataclass(frozen=True)
class StorageRoom:
    """A lab's standing against its storage quota at one moment."""

    lab: str
    quota: int
    held: int

    @property
    def room(self) -> int:
        return max(0, self.quota - self.held)

    def refusal(self, status: int, what: str) -> ApiError:
        """One line: the setting, the quota, what the lab holds, and how to make room."""
        return ApiError(status, f"{what} would take lab {self.lab!r} past its storage quota of "
                                f"{self.quota} bytes ({STORAGE_SETTING}); it holds {self.held} bytes now; "
                                "delete datasets or models to make room", code="quota_exceeded")


def storage_room(settings: ServiceSettings, lab: str) -> StorageRoom | None:
    """None when the deployment sets no storage quota."""
    if settings.lab_storage_quota is None:
        return None
    return StorageRoom(lab, int(settings.lab_storage_quota), held_bytes(lab))


def check_job_storage(settings: ServiceSettings, lab: str, kind: str, estimated_bytes: int = 0) -> None:
    """422 for a job that would take the lab past its storage quota: any job once the lab holds
    its quota (every job writes something), or one whose estimated output does not fit."""
    standing = storage_room(settings, lab)
    if standing is None:
        return
    if standing.room == 0 or estimated_bytes > standing.room:
        what = f"this {kind} job (about {estimated_bytes} bytes of output)" if estimated_bytes else f"a new {kind} job"
        raise standing.refusal(422, what)


def active_jobs(lab: str) -> int:
    with workers_db.session() as s:
        return int(s.scalar(select(func.count()).select_from(JobRecord).where(
            JobRecord.owner == lab, JobRecord.state.in_(ACTIVE_STATES))) or 0)


def check_active_jobs(settings: ServiceSettings, lab: str) -> None:
    """429 with Retry-After when the lab already has MCVAE_LAB_MAX_ACTIVE_JOBS jobs queued or
    running: another lab's jobs do not count."""
    limit = settings.lab_max_active_jobs
    if limit is None:
        return
    count = active_jobs(lab)
    if count >= limit:
        retry = settings.quota_retry_seconds
        raise ApiError(429, f"lab {lab!r} has {count} jobs queued or running, the most this deployment "
                            f"allows per lab ({ACTIVE_JOBS_SETTING}={limit}); retry in {retry} s or cancel one",
                       code="quota_exceeded", headers={"Retry-After": str(retry)})


def check_new_job(settings: ServiceSettings, lab: str, kind: str, estimated_bytes: int = 0) -> None:
    """Both per-lab quotas, before a job is submitted."""
    check_active_jobs(settings, lab)
    check_job_storage(settings, lab, kind, estimated_bytes)
