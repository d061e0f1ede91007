"""Which lab owns which dataset and model, and the follow-ups when their jobs end.

A dataset is ``dataset-<ingest job id>``, a trained model ``model-<train job id>``; both are
registered to the caller's lab when their job is submitted. An augment job registers its
models (``model-<job>-<i>``) itself, so the gateway records the augmentation and adds its
models once it sees the job succeeded ("reconcile", run on reads; only unfinished rows are
looked at). Reconcile also removes the artifacts of resources deleted while their job was still
running. Upload copies are not removed on reads: the ingest job removes its upload when it is
done with it, and the storage sweeper (workers/sweeper.py) whatever an ended ingest left.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy import func, select, update

import workers
from workers import ArtifactStore
from workers.records import DELIVERED, JobRecord

from . import db
from .errors import ApiError, scrub
from .records import ResourceRecord, utcnow

log = logging.getLogger("service.resources")


def add(lab: str, resource_id: str, kind: str, job_id: str, *, pending: bool = True, **fields) -> None:
    with db.session() as s:
        s.add(ResourceRecord(id=resource_id, lab=lab, kind=kind, job_id=job_id, pending=pending,
                             created_at=utcnow(), **fields))


def find(lab: str, resource_id: str, kind: str) -> ResourceRecord | None:
    with db.session() as s:
        rec = s.get(ResourceRecord, resource_id) if isinstance(resource_id, str) else None
        if rec is None or rec.lab != lab or rec.kind != kind or rec.deleted_at is not None:
            return None
        return rec


def owned(lab: str, resource_id: str, kind: str, store: ArtifactStore) -> ResourceRecord:
    """The lab's resource, or 404: another lab's resource looks exactly like a missing one."""
    rec = find(lab, resource_id, kind)
    if rec is None and kind == "model":
        reconcile(lab, store)  # an augment job may have just made it
        rec = find(lab, resource_id, kind)
    if rec is None:
        raise ApiError(404, f"no {kind} {resource_id!r}")
    return rec


def by_job(lab: str, kind: str, job_ids: list[str]) -> dict[str, ResourceRecord]:
    with db.session() as s:
        rows = s.scalars(select(ResourceRecord).where(
            ResourceRecord.lab == lab, ResourceRecord.kind == kind, ResourceRecord.job_id.in_(job_ids)))
        return {r.job_id: r for r in rows}


def page(lab: str, kind: str, limit: int, offset: int, **where) -> tuple[list[ResourceRecord], int]:
    """Newest first."""
    conditions = [ResourceRecord.lab == lab, ResourceRecord.kind == kind,
                  ResourceRecord.deleted_at.is_(None)]
    conditions += [getattr(ResourceRecord, k) == v for k, v in where.items() if v is not None]
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(ResourceRecord).where(*conditions))
        rows = list(s.scalars(select(ResourceRecord).where(*conditions)
                              .order_by(ResourceRecord.created_at.desc(), ResourceRecord.id)
                              .limit(limit).offset(offset)))
    return rows, int(total or 0)


def jobs_by_id(job_ids: list[str]) -> dict[str, workers.Job]:
    """Several job records in one query (the job API reads one at a time)."""
    if not job_ids:
        return {}
    with db.session() as s:
        return {r.id: workers.Job.model_validate(r)
                for r in s.scalars(select(JobRecord).where(JobRecord.id.in_(job_ids)))}


def delete(rec: ResourceRecord, store: ArtifactStore) -> None:
    """Gone for the API at once; its files go now, or when its job ends if it is still running
    (cancelled here, so that is soon)."""
    job = workers.get(rec.job_id)
    if not job.done:
        workers.cancel(rec.job_id)
    with db.session() as s:
        s.execute(update(ResourceRecord).where(ResourceRecord.id == rec.id)
                  .values(deleted_at=utcnow(), pending=True))
        rec.deleted_at = utcnow()
    job = workers.get(rec.job_id)
    if job.done:
        _follow_up(rec, job, store)


def reconcile(lab: str, store: ArtifactStore) -> None:
    with db.session() as s:
        rows = list(s.scalars(select(ResourceRecord).where(ResourceRecord.lab == lab,
                                                           ResourceRecord.pending.is_(True))))
    if not rows:
        return
    jobs = jobs_by_id(sorted({r.job_id for r in rows}))
    for rec in rows:
        job = jobs.get(rec.job_id)
        if job is None or not job.done:
            continue
        try:
            _follow_up(rec, job, store)
        except sqlalchemy.exc.IntegrityError:
            pass  # a concurrent request did the same follow-up first
        except Exception:
            log.warning("follow-up failed", extra={"resource": rec.id, "job_id": rec.job_id}, exc_info=True)


def _follow_up(rec: ResourceRecord, job: workers.Job, store: ArtifactStore) -> None:
    with db.session() as s:
        if rec.deleted_at is not None:
            store.delete(rec.id)
            # Preprocessed tensors the workers cached for a dataset are patient data too.
            shutil.rmtree(store.root / ".cache" / rec.id, ignore_errors=True)
        elif rec.kind == "augmentation" and job.state in DELIVERED:
            for label, model_id in sorted((job.metrics.get("models") or {}).items()):
                if s.get(ResourceRecord, model_id) is None:
                    s.add(ResourceRecord(id=model_id, lab=rec.lab, kind="model", job_id=job.id,
                                         name=f"{rec.name or 'augmentation'} ({label})", label=label,
                                         dataset=rec.dataset, pending=False, created_at=utcnow()))
        s.execute(update(ResourceRecord).where(ResourceRecord.id == rec.id)
                  .values(pending=False, upload=None))


# -- what the outside may see -------------------------------------------------------------------------
def public_text(text: str | None, store: ArtifactStore) -> str | None:
    """Strip server paths from a job's message: a scan named in an error reads 'AD/sub-3.nii.gz'
    (its place in the cohort), not the artifact store's folder on the worker."""
    if not text:
        return text
    for root in {str(store.root), str(Path(store.root).resolve())}:
        text = re.sub(re.escape(root) + r"/(?:[^\s/]+/)*?data/", "", text)
        # the upload's folder itself ("<...>/data: no scans found"): the upload, in the user's words
        text = re.sub(re.escape(root) + r"/(?:[^\s/]+/)*?data(?=[\s:;,)]|$)", "the upload", text)
        text = text.replace(root, "<store>")
    return scrub(text)  # and any other server path, URL or host:port (a broker's, a database's)
