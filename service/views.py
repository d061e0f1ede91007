"""From job records and resource rows to the API's response bodies."""

from __future__ import annotations

import json
from typing import Any

import workers
from workers import ArtifactStore
from workers.records import DELIVERED

from . import schemas
from .records import ResourceRecord
from .resources import public_text

DOWNLOADABLE = ("sample", "augment", "evaluate")
# "partial" (an augmentation short of synthetic scans) delivered its models like "succeeded".
DATASET_STATES = {"queued": "ingesting", "running": "ingesting", "succeeded": "ready", "partial": "ready",
                  "failed": "failed", "cancelled": "cancelled"}
MODEL_STATES = {"queued": "training", "running": "training", "succeeded": "ready", "partial": "ready",
                "failed": "failed", "cancelled": "cancelled"}


def job(j: workers.Job, store: ArtifactStore) -> schemas.Job:
    result = (f"/v1/jobs/{j.id}/result" if j.state in DELIVERED and j.kind in DOWNLOADABLE
              and j.artifacts else None)
    return schemas.Job(
        id=j.id, kind=j.kind, state=j.state, stage=j.stage, progress=j.progress, params=j.params,
        metrics=j.metrics, artifacts=j.artifacts, error=public_text(j.error, store),
        attempts=j.attempts, cancel_requested=j.cancel_requested, created_at=j.created_at,
        started_at=j.started_at, finished_at=j.finished_at, updated_at=j.updated_at,
        heartbeat_at=j.heartbeat_at, stale=j.stale, result_url=result, events_url=f"/v1/jobs/{j.id}/events")


def dataset(rec: ResourceRecord, j: workers.Job, store: ArtifactStore) -> schemas.Dataset:
    summary = j.metrics.get("summary") if j.state == "succeeded" else None
    return schemas.Dataset(
        id=rec.id, name=rec.name, state=DATASET_STATES[j.state], job_id=j.id, created_at=rec.created_at,
        n_scans=(summary or {}).get("n_scans"), classes=(summary or {}).get("classes") or {},
        spatial_dims=(summary or {}).get("spatial_dims"),
        summary={k: v for k, v in summary.items() if k not in ("source", "warnings")} if summary else None,
        warnings=(summary or {}).get("warnings") or [], error=public_text(j.error, store))


def saved_config(store: ArtifactStore, model_id: str) -> dict[str, Any] | None:
    """The model's config.json (plain JSON: reading it needs no torch)."""
    try:
        return json.loads((store.path(model_id) / "config.json").read_text())
    except (workers.ArtifactNotFound, FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def model(rec: ResourceRecord, j: workers.Job, store: ArtifactStore) -> schemas.Model:
    state = MODEL_STATES[j.state]
    saved = saved_config(store, rec.id) if state == "ready" else None
    error = public_text(j.error, store)
    if state == "ready" and saved is None:
        state, error = "failed", "the model's files are missing from the artifact store"
    meta = (saved or {}).get("meta", {})
    if saved:
        config = {"model": saved.get("model"), "sampler": saved.get("sampler"),
                  "preprocess": meta.get("preprocess"), "train": meta.get("train")}
    else:
        config = {k: j.params.get(k) for k in ("preprocess", "model", "sampler", "train")}
    if j.kind == "augment":
        per_class = j.metrics.get("classes") or {}
        served = meta.get("classes")
        if isinstance(served, list):  # a shared model (<job>/shared): each class it drew, by class
            metrics = {c: per_class[c] for c in served if c in per_class}
        else:
            metrics = per_class.get(rec.label) or {}
        curves = meta.get("history") or []
    else:
        metrics = {k: v for k, v in j.metrics.items() if k != "history"}
        curves = j.metrics.get("history") or []
    return schemas.Model(
        id=rec.id, name=rec.name, state=state, progress=j.progress if j.kind == "train" else 1.0,
        job_id=j.id, dataset=rec.dataset, label=rec.label, created_at=rec.created_at, config=config,
        metrics=metrics, curves=curves, error=error)


def augmentation(j: workers.Job, rec: ResourceRecord | None, store: ArtifactStore) -> schemas.Augmentation:
    done = j.state in DELIVERED
    return schemas.Augmentation(
        id=j.id, name=rec.name if rec else None, dataset=j.params.get("dataset"),
        target=j.params.get("target"), profile=j.params.get("profile"), state=j.state, stage=j.stage, progress=j.progress,
        real_counts=j.metrics.get("real_counts") if done else None,
        synthetic_counts=j.metrics.get("synthetic_counts") if done else None,
        train_counts=j.metrics.get("train_counts") if done else None,
        near_copies_replaced=j.metrics.get("near_copies_replaced") if done else None,
        models=(j.metrics.get("models") or {}) if done else {},
        metrics=j.metrics, error=public_text(j.error, store), created_at=j.created_at,
        finished_at=j.finished_at, result_url=f"/v1/jobs/{j.id}/result" if done else None,
        events_url=f"/v1/jobs/{j.id}/events")
