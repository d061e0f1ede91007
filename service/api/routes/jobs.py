"""Jobs of the caller's lab: state, list, cancel, result download, and progress as SSE."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

import workers
from workers.records import DELIVERED

from ...deps import IdPath, LabDep, SettingsDep, StoreDep
from ...errors import ApiError
from ...resources import public_text
from ...results import payload_files, public_manifest, zip_stream
from ...schemas import Job, JobEvent, JobKind, JobList, JobState
from ...views import DOWNLOADABLE
from ...views import job as job_view
from . import COMMON, errors

log = logging.getLogger("service.jobs")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=COMMON)


def owned_job(job_id: IdPath, lab: LabDep) -> workers.Job:
    return workers.get(job_id, owner=lab.name)


@router.get("", response_model=JobList, summary="The lab's jobs, newest first")
def list_jobs(lab: LabDep, store: StoreDep, state: JobState | None = None, kind: JobKind | None = None,
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=10**9)) -> JobList:
    found = workers.list_jobs(owner=lab.name, state=state, kind=kind, limit=limit + 1, offset=offset)
    return JobList(items=[job_view(j, store) for j in found[:limit]], limit=limit, offset=offset,
                   next_offset=offset + limit if len(found) > limit else None)


@router.get("/{job_id}", response_model=Job, summary="State, stage, progress, metrics and error",
            responses=errors(404))
def get_job(job: Annotated[workers.Job, Depends(owned_job)], store: StoreDep) -> Job:
    return job_view(job, store)


@router.post("/{job_id}/cancel", response_model=Job, responses=errors(404),
             summary="Cancel: at once if queued, at its next step if running; finished jobs are unchanged")
def cancel_job(job: Annotated[workers.Job, Depends(owned_job)], lab: LabDep, store: StoreDep) -> Job:
    log.info("cancel requested", extra={"job_id": job.id, "state": job.state})
    return job_view(workers.cancel(job.id, owner=lab.name), store)


@router.get("/{job_id}/result", summary="Download the result (zip, or one file)",
            response_class=StreamingResponse, responses={
                200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}},
                                  "application/json": {"schema": {"type": "object"}}},
                      "description": "A zip of scans, sidecars, manifest and report; an evaluation's JSON"},
                **errors(404, 409)})
def job_result(job: Annotated[workers.Job, Depends(owned_job)], store: StoreDep):
    if job.kind not in DOWNLOADABLE:
        where = "a dataset: see /v1/datasets" if job.kind == "ingest" else "a model: see /v1/models"
        raise ApiError(409, f"a {job.kind} job's result is {where}", job_id=job.id)
    if job.state not in DELIVERED:  # "partial": delivered, short of synthetic scans
        raise ApiError(409, f"job is {job.state}; a result exists once it has succeeded", job_id=job.id)
    if not job.artifacts or not store.exists(job.artifacts[0]):
        raise ApiError(404, "the job's result is no longer in the artifact store", job_id=job.id)
    artifact = store.get(job.artifacts[0])
    path = store.path(artifact.id)
    if artifact.file:  # a single file (an evaluation report)
        return FileResponse(path, filename=artifact.file,
                            media_type="application/json" if artifact.file.endswith(".json") else None)
    files = payload_files(path)
    replace = {}
    if (path / "manifest.csv").is_file():
        replace["manifest.csv"] = public_manifest(path / "manifest.csv", store)
    return StreamingResponse(zip_stream(files, replace), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{job.kind}-{job.id}.zip"'})


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses=errors(404),
            summary="Progress as Server-Sent Events until the job ends",
            description="Each event's data is a JobEvent (JSON); its SSE id is the event id, so a "
                        "reconnecting client resumes with Last-Event-ID (or ?after=). The last event "
                        "is named 'end' and carries the final state.")
async def job_events(job: Annotated[workers.Job, Depends(owned_job)], request: Request,
                     settings: SettingsDep, store: StoreDep,
                     after: int | None = Query(None, ge=0, le=2**62, description="last event id seen"),
                     last_event_id: str | None = Header(None, include_in_schema=False)
                     ) -> AsyncIterable[JobEvent]:
    cursor = after
    if cursor is None and last_event_id and last_event_id.isdigit():
        cursor = int(last_event_id)
    while True:
        # The state is read before the events: an event written after a final state is read
        # would otherwise be missed. Reading it first, the last batch includes everything.
        current = await run_in_threadpool(workers.get, job.id)
        batch = await run_in_threadpool(workers.events, job.id, cursor)
        for e in batch:
            cursor = e.id
            yield ServerSentEvent(id=str(e.id), event="progress", data=JobEvent(
                id=e.id, at=e.at, level=e.level, stage=e.stage, progress=e.progress,
                message=public_text(e.message, store) or "").model_dump(mode="json"))
        if current.done and len(batch) < 1000:
            yield ServerSentEvent(id=str(cursor or 0), event="end", data=JobEvent(
                id=cursor or 0, at=current.finished_at or current.updated_at, level="info",
                stage=current.stage, progress=current.progress, state=current.state,
                message=public_text(current.error, store) or current.state).model_dump(mode="json"))
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(settings.sse_poll_seconds)
