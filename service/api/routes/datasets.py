"""Datasets: upload a cohort archive (ingested by a job), list, get, delete."""

from __future__ import annotations

import logging
import re

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import workers
from workers import sources

from ... import quota, resources, uploads, views
from ...deps import IdPath, LabDep, SettingsDep, StoreDep
from ...errors import ApiError
from ...schemas import TEXT_PATTERN, Dataset, DatasetList
from . import COMMON, errors

log = logging.getLogger("service.datasets")
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=COMMON)

_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = {"requestBody": {"required": True, "description": (
    "The cohort as a .zip or .tar.gz: one folder per class, or a CSV manifest path,label[,split]. "
    "Either the 'file' field of a form, or the archive itself as the body."), "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "name": {"type": "string", "maxLength": 200}}}},
    "application/zip": _BINARY, "application/gzip": _BINARY, "application/octet-stream": _BINARY}}}


def _store_upload(archive, store: workers.ArtifactStore, limits: uploads.Limits) -> str:
    """Unpack in scratch space; only a fully checked tree becomes an artifact (one rename)."""
    with store.scratch() as scratch:
        root = uploads.unpack(archive, scratch / "unpacked", limits)
        try:
            sources.confine(root)  # a manifest row naming a server path or '..' reads nothing
        except sources.UnsafeSource as err:
            raise ApiError(422, f"unsafe archive: {err}") from None
        upload_id = f"dataset-upload-{store.new_id('dataset').split('-', 1)[1]}"
        with store.writer("dataset", upload_id, meta={"upload": True}) as payload:
            uploads.move_tree(root, payload)
    return upload_id


@router.post("", status_code=202, summary="Upload a cohort; an ingest job validates it",
             openapi_extra=UPLOAD_BODY,
             responses={201: {"model": Dataset, "description": "Ingested within ?wait= seconds"},
                        202: {"model": Dataset, "description": "Accepted; ingest is running"},
                        **errors(413, 415, 429, 500, 503)})
async def upload_dataset(request: Request, lab: LabDep, settings: SettingsDep, store: StoreDep,
                         name: str | None = Query(None, max_length=200, pattern=TEXT_PATTERN,
                                                 description="a label for people"),
                         wait: float = Query(0, ge=0, le=3600, description=(
                             "seconds to wait for the ingest: a bad scan is then a 422 naming the file"))):
    limits = uploads.Limits(settings.max_upload_bytes, settings.max_archive_files,
                            settings.max_unpacked_bytes, settings.max_compression_ratio)
    max_bytes, too_large = settings.max_upload_bytes, None
    await run_in_threadpool(quota.check_active_jobs, settings, lab.name)  # an upload starts an ingest job
    standing = await run_in_threadpool(quota.storage_room, settings, lab.name)
    if standing is not None:
        # Neither the archive nor its unpacked tree may pass what the lab may still hold: the
        # upload stops there, before its bytes reach the disk.
        def over_quota():
            return standing.refusal(413, "this upload")
        limits.quota_room, limits.over_quota = standing.room, over_quota
        if standing.room < max_bytes:
            max_bytes, too_large = standing.room, over_quota
        if standing.room == 0:
            raise over_quota()
    with store.scratch() as scratch:
        received = await uploads.receive(request, scratch / "upload", max_bytes, too_large)
        name = name or received.fields.get("name") or None
        if name is not None and (len(name) > 200 or not re.match(TEXT_PATTERN, name)):
            raise ApiError(422, "name: at most 200 characters, and no control characters")
        upload_id = await run_in_threadpool(_store_upload, received.path, store, limits)
    try:
        params = {"source": upload_id, "name": name}
        job = await run_in_threadpool(workers.submit, "ingest", params, lab.name)
    except BaseException:
        await run_in_threadpool(store.delete, upload_id)  # no job will ever read it
        raise
    dataset_id = f"dataset-{job.id}"
    await run_in_threadpool(resources.add, lab.name, dataset_id, "dataset", job.id,
                            name=name, upload=upload_id)
    log.info("dataset uploaded", extra={"dataset": dataset_id, "job_id": job.id, "bytes": received.size})

    if wait > 0:
        await request.app.state.waiter.wait(job.id, min(wait, settings.max_wait_seconds))
    rec = await run_in_threadpool(resources.owned, lab.name, dataset_id, "dataset", store)
    await run_in_threadpool(resources.reconcile, lab.name, store)
    job = await run_in_threadpool(workers.get, job.id)
    view = views.dataset(rec, job, store)
    if view.state == "failed" and wait > 0:
        # The caller waited for the verdict: the upload is refused, and leaves nothing behind.
        await run_in_threadpool(resources.delete, rec, store)
        internal = (job.error or "").startswith("internal error")  # the runner's prefix for bugs
        raise ApiError(500 if internal else 422, view.error or "ingest failed", job_id=job.id)
    return JSONResponse(view.model_dump(mode="json"), status_code=201 if view.state == "ready" else 202,
                        headers={"Location": f"/v1/datasets/{dataset_id}"})


@router.get("", response_model=DatasetList, summary="The lab's datasets, newest first")
def list_datasets(lab: LabDep, store: StoreDep, limit: int = Query(50, ge=1, le=500),
                  offset: int = Query(0, ge=0, le=10**9)) -> DatasetList:
    resources.reconcile(lab.name, store)
    rows, total = resources.page(lab.name, "dataset", limit, offset)
    jobs = resources.jobs_by_id([r.job_id for r in rows])
    return DatasetList(items=[views.dataset(r, jobs[r.job_id], store) for r in rows if r.job_id in jobs],
                       limit=limit, offset=offset, total=total)


@router.get("/{dataset_id}", response_model=Dataset, responses=errors(404),
            summary="Class counts, summary and state of a dataset")
def get_dataset(dataset_id: IdPath, lab: LabDep, store: StoreDep) -> Dataset:
    resources.reconcile(lab.name, store)
    rec = resources.owned(lab.name, dataset_id, "dataset", store)
    return views.dataset(rec, workers.get(rec.job_id), store)


@router.delete("/{dataset_id}", status_code=204, response_class=Response, responses=errors(404, 409),
               summary="Delete a dataset and its files (refused while a job uses it)")
def delete_dataset(dataset_id: IdPath, lab: LabDep, store: StoreDep) -> Response:
    rec = resources.owned(lab.name, dataset_id, "dataset", store)
    for state in ("queued", "running"):
        for j in workers.list_jobs(owner=lab.name, state=state, limit=1000):
            if j.params.get("dataset") == dataset_id:
                raise ApiError(409, f"dataset is in use by {j.kind} job {j.id} ({state}); "
                                    "cancel it or wait for it to end", job_id=j.id)
    resources.delete(rec, store)
    return Response(status_code=204)
