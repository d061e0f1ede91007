"""Augmentations: balance a dataset with synthetic scans. The job trains one class-conditional
model on the dataset's train split of every class (``config.model_scope`` "shared", the
default; "per_class": a model per minority class on its own scans; "transfer": the same, each
started from a base model of every class's train scans), optionally from a resolution
``profile``'s settings,
samples to the target, and packages one self-contained
cohort: preprocessed real scans, synthetic scans with sidecars, a manifest relative to the zip
(``path,label,split,synthetic,source_path``) and a report."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query

import workers
from models.data.advice import setting
from models.data.errors import CohortError
from models.targets import synthetic_counts
from workers.params import estimated_output_bytes, validate

from ... import quota, resources, views
from ...deps import IdPath, LabDep, SettingsDep, StoreDep
from ...errors import ApiError
from ...schemas import Augmentation, AugmentationList, AugmentRequest
from . import COMMON, errors
from .models import ready_dataset

log = logging.getLogger("service.augmentations")
router = APIRouter(prefix="/v1/augmentations", tags=["augmentations"], responses=COMMON)


def check_target(target, counts: dict[str, int], limit: int) -> None:
    """models.targets' rule on the dataset's class counts, so that a bad target is a 422 now,
    worded as the CLI words it (a typo of a class gets "did you mean"), rather than a failed job
    later (the worker checks again, authoritatively)."""
    try:
        synthetic_counts(counts, target, limit)
    except CohortError as err:
        raise ApiError(422, str(err)) from None


def train_counts(summary: dict) -> dict[str, int]:
    """Scans per class that balancing counts: the train split's when the dataset has splits."""
    by_split = summary.get("class_splits") or {}
    if by_split and "train" in by_split:
        return {c: by_split["train"].get(c, 0) for c in summary.get("classes") or {}}
    return summary.get("classes") or {}


def check_quality(summary: dict, qc: dict | None = None) -> None:
    """Scans the ingest's quality control found unusable (models.data.quality): augment would
    refuse them, so refuse the request now, naming the first. The ingest checked with the default
    thresholds: a config with its own ``qc`` settings (other thresholds, skip_bad_scans) is left
    to the worker's check."""
    refused = summary.get("quality") or []
    if refused and not qc:
        first = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ApiError(422, f"dataset: {first['path']}: {first['problem']}{more}; to leave such scans out of "
                            f"training instead, {setting('skip_bad_scans')}, or change the qc thresholds")


def _owned_augment(lab: str, job_id: str) -> workers.Job:
    job = workers.get(job_id, owner=lab)
    if job.kind != "augment":
        raise ApiError(404, f"no augmentation {job_id!r}")
    return job


@router.post("", status_code=202, response_model=Augmentation, responses=errors(404, 409, 503),
             summary="Start an augmentation; the result is a zip of synthetic scans and a report")
def start_augmentation(body: AugmentRequest, lab: LabDep, settings: SettingsDep,
                       store: StoreDep) -> Augmentation:
    summary = ready_dataset(lab.name, body.dataset, store)
    # Config and target syntax first (workers.params: the library's torch-free rules), then the
    # checks that need the dataset: a 422 now rather than a failed job later.
    params = validate("augment", {"dataset": body.dataset, "target": body.target, "config": body.config,
                                  **({"profile": body.profile} if body.profile is not None else {})},
                      workers.get_settings())  # the deployment's job limits are the workers' settings
    check_quality(summary, params.augment_config().get("qc"))
    check_target(params.target, train_counts(summary), settings.max_synthetic_per_class)
    quota.check_new_job(settings, lab.name, "augment", estimated_output_bytes(params))
    job = workers.submit("augment", params.model_dump(mode="json"), owner=lab.name)
    resources.add(lab.name, f"augmentation-{job.id}", "augmentation", job.id, name=body.name,
                  dataset=body.dataset)
    log.info("augmentation submitted", extra={"job_id": job.id, "dataset": body.dataset})
    rec = resources.find(lab.name, f"augmentation-{job.id}", "augmentation")
    return views.augmentation(job, rec, store)


@router.get("", response_model=AugmentationList, summary="The lab's augmentations, newest first")
def list_augmentations(lab: LabDep, store: StoreDep, limit: int = Query(50, ge=1, le=500),
                       offset: int = Query(0, ge=0, le=10**9)) -> AugmentationList:
    resources.reconcile(lab.name, store)
    found = workers.list_jobs(owner=lab.name, kind="augment", limit=limit + 1, offset=offset)
    names = resources.by_job(lab.name, "augmentation", [j.id for j in found])
    return AugmentationList(items=[views.augmentation(j, names.get(j.id), store) for j in found[:limit]],
                            limit=limit, offset=offset,
                            next_offset=offset + limit if len(found) > limit else None)


@router.get("/{augmentation_id}", response_model=Augmentation, responses=errors(404),
            summary="State, counts, models and result of an augmentation")
def get_augmentation(augmentation_id: IdPath, lab: LabDep, store: StoreDep) -> Augmentation:
    job = _owned_augment(lab.name, augmentation_id)
    resources.reconcile(lab.name, store)
    rec = resources.find(lab.name, f"augmentation-{job.id}", "augmentation")
    return views.augmentation(job, rec, store)
