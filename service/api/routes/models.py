"""Models: train one on a dataset, list, get (config, metrics, curves), delete, and sample."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

import workers
from models.options import sample_class
from workers.params import check_budget, estimated_output_bytes, validate

from ... import quota, resources, views
from ...deps import IdPath, LabDep, SettingsDep, StoreDep
from ...errors import ApiError
from ...results import payload_files, zip_stream
from ...schemas import ID_PATTERN, Job, Model, ModelList, SampleRequest, TrainRequest
from ...settings import ServiceSettings
from . import COMMON, errors

log = logging.getLogger("service.models")
router = APIRouter(prefix="/v1/models", tags=["models"], responses=COMMON)


def ready_dataset(lab: str, dataset_id: str, store: workers.ArtifactStore,
                  label: str | None = None) -> dict:
    """The lab's dataset, ingested; its summary. 404 / 409 / 422 otherwise."""
    rec = resources.owned(lab, dataset_id, "dataset", store)
    job = workers.get(rec.job_id)
    if job.state != "succeeded":
        raise ApiError(409, f"dataset {dataset_id} is {views.DATASET_STATES[job.state]}, not ready")
    summary = job.metrics.get("summary") or {}
    classes = summary.get("classes") or {}
    if label is not None and label not in classes:
        raise ApiError(422, f"label: dataset has no class {label!r} "
                            f"(classes: {', '.join(sorted(classes))})")
    return summary


@router.post("", status_code=202, response_model=Model, responses=errors(404, 409, 503),
             summary="Train a model on a dataset (optionally one class of it)")
def train_model(body: TrainRequest, lab: LabDep, settings: SettingsDep, store: StoreDep) -> Model:
    summary = ready_dataset(lab.name, body.dataset, store, body.label)
    params = body.model_dump(exclude={"name"}, exclude_none=True)
    # The job-size limits with the scans it trains on (steps per epoch): submit checks them
    # without (one step per epoch, a lower bound).
    classes = summary.get("classes") or {}
    n_scans = classes.get(body.label, 0) if body.label is not None else sum(classes.values())
    limits = workers.get_settings()
    parsed = validate("train", params, limits)
    check_budget(parsed, limits, n_scans=n_scans or None)  # 422: InvalidParams
    quota.check_new_job(settings, lab.name, "train", estimated_output_bytes(parsed))
    job = workers.submit("train", params, owner=lab.name)
    model_id = f"model-{job.id}"
    resources.add(lab.name, model_id, "model", job.id, pending=False, name=body.name,
                  label=body.label, dataset=body.dataset)
    log.info("training submitted", extra={"model": model_id, "job_id": job.id})
    return views.model(resources.owned(lab.name, model_id, "model", store), job, store)


@router.get("", response_model=ModelList, summary="The lab's models, newest first")
def list_models(lab: LabDep, store: StoreDep,
                dataset: str | None = Query(None, max_length=200, pattern=ID_PATTERN),
                limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=10**9)) -> ModelList:
    resources.reconcile(lab.name, store)
    rows, total = resources.page(lab.name, "model", limit, offset, dataset=dataset)
    jobs = resources.jobs_by_id(sorted({r.job_id for r in rows}))
    return ModelList(items=[views.model(r, jobs[r.job_id], store) for r in rows if r.job_id in jobs],
                     limit=limit, offset=offset, total=total)


@router.get("/{model_id}", response_model=Model, responses=errors(404),
            summary="Configuration, metrics and training curves of a model")
def get_model(model_id: IdPath, lab: LabDep, store: StoreDep) -> Model:
    rec = resources.owned(lab.name, model_id, "model", store)
    return views.model(rec, workers.get(rec.job_id), store)


@router.delete("/{model_id}", status_code=204, response_class=Response, responses=errors(404),
               summary="Delete a model (cancelling its training if it is still running)")
def delete_model(model_id: IdPath, lab: LabDep, store: StoreDep) -> Response:
    resources.delete(resources.owned(lab.name, model_id, "model", store), store)
    return Response(status_code=204)


# -- sampling ------------------------------------------------------------------------------------------
def _submit_sample(lab: str, model_id: str, body: SampleRequest, store: workers.ArtifactStore,
                   limit: int, settings: ServiceSettings, interactive: bool = False) -> workers.Job:
    rec = resources.owned(lab, model_id, "model", store)
    if body.n > limit:
        raise ApiError(422, f"n: at most {limit} scans per request (MCVAE_MAX_SAMPLE_N), got {body.n}")
    state = views.MODEL_STATES[workers.get(rec.job_id).state]
    if state != "ready" or not store.exists(model_id):
        raise ApiError(409, f"model {model_id} is {state}, not ready for sampling")
    saved = views.saved_config(store, model_id)
    if saved is not None:  # the worker's rule (models.options), checked now: a 422, not a failed job
        try:
            sample_class(saved.get("meta") or {}, int((saved.get("model") or {}).get("n_classes") or 0),
                         body.label, "label")
        except ValueError as err:
            raise ApiError(422, str(err)) from None
    quota.check_new_job(settings, lab, "sample")
    params = {"model": model_id, "n": body.n, "seed": body.seed}
    if body.label is not None:
        params["label"] = body.label
    # A client waiting for the answer: the interactive queue, served before ingest and training.
    job = workers.submit("sample", params, owner=lab, interactive=interactive)
    log.info("sampling submitted", extra={"job_id": job.id, "model": model_id, "n": body.n})
    return job


def _scans(job: workers.Job, store: workers.ArtifactStore):
    folder = store.path(job.artifacts[0])
    files = [(p, name) for p, name in payload_files(folder)
             if name.startswith("scans/") or name == "manifest.csv"]
    if not any(name.endswith(".nii.gz") for _, name in files):
        raise ApiError(409, "the model records no preprocessing, so its samples have no scan geometry; "
                            "download the raw result from the job instead", job_id=job.id)
    return files


@router.post("/{model_id}/samples", summary="Synthetic scans: the scans for small n, a job for large n",
             response_class=Response, responses={
                 200: {"description": "n = 1: one NIfTI (.nii.gz); n > 1: a zip of scans, sidecars "
                                      "and a manifest", "content": {
                           "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                           "application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                 202: {"model": Job, "description": "Queued (large n, wait=false, or not done within "
                                                    "MCVAE_SYNC_TIMEOUT_SECONDS): follow the job"},
                 **errors(404, 409, 500, 503)})
async def sample(model_id: IdPath, body: SampleRequest, request: Request, lab: LabDep,
                 settings: SettingsDep, store: StoreDep):
    limit = workers.get_settings().max_sample_n
    waits = body.wait and body.n <= settings.sync_sample_max
    job = await run_in_threadpool(_submit_sample, lab.name, model_id, body, store, limit, settings, waits)
    headers = {"X-Job-ID": job.id, "Location": f"/v1/jobs/{job.id}"}
    if not body.wait or body.n > settings.sync_sample_max:
        return JSONResponse(views.job(job, store).model_dump(mode="json"), 202, headers=headers)
    state = await request.app.state.waiter.wait(job.id, settings.sync_timeout_seconds)
    job = await run_in_threadpool(workers.get, job.id)
    if state is None or not job.done:
        return JSONResponse(views.job(job, store).model_dump(mode="json"), 202, headers=headers)
    if job.state != "succeeded":
        internal = (job.error or "").startswith("internal error")  # the runner's prefix for bugs
        status = 409 if job.state == "cancelled" else 500 if internal else 422
        why = resources.public_text(job.error, store) or job.state
        raise ApiError(status, f"sampling {job.state}: {why}",
                       job_id=job.id)
    files = await run_in_threadpool(_scans, job, store)
    if body.n == 1:
        [(path, name)] = [(p, n) for p, n in files if n.endswith(".nii.gz")]
        return FileResponse(path, media_type="application/gzip", filename=name.rsplit("/", 1)[-1],
                            headers=headers)
    return StreamingResponse(zip_stream(files), media_type="application/zip", headers={
        **headers, "Content-Disposition": f'attachment; filename="samples-{job.id}.zip"'})
