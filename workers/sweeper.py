"""Storage housekeeping, off the request path: every worker runs ``sweep`` every
``MCVAE_SWEEP_INTERVAL`` seconds from a timer thread (``sweep()`` runs one pass).

What it removes, and when (retentions in seconds, settings ``MCVAE_*_RETENTION``):

| what | removed when |
|---|---|
| `.staging/<id>.run-<token>.*`, `.staging/scratch.run-<token>.*` (a job run's partial artifacts and unpacking space) | the run is over: no running job holds that token (it ended, or its worker died and the job was taken over) |
| `.staging/<id>.*` untagged (gateway writes) | untouched for `STAGING_RETENTION` (1 h) |
| `.staging/scratch-*` untagged (partial uploads at the gateway) | untouched for `SCRATCH_RETENTION` (6 h) |
| `.trash/*` (a removal interrupted by a crash) | at once |
| `checkpoint-<job>-*` | its job succeeded or no longer exists; failed or cancelled for `CHECKPOINT_RETENTION` (24 h) |
| `dataset-upload-*` (the upload copy an ingest reads) | no queued or running ingest reads it, `UPLOAD_RETENTION` (10 min) after it was stored |
| `.outcomes/<job>.json` (a run's outcome, kept until recorded; outcomes.py) | its job has ended or no longer exists |
| `.cache/<dataset>` (preprocessed tensors: patient data) | its dataset no longer exists, untouched for `CACHE_RETENTION` (10 min) |

"Untouched" is the newest modification time anywhere in the folder, so a slow upload that is
still being written is never taken. Removal goes through a rename into ``.trash`` first, so
nobody sees half a folder.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from sqlalchemy import select

from . import db, outcomes
from .artifacts import ArtifactNotFound, ArtifactStore, run_of
from .records import DELIVERED, TERMINAL, JobRecord, utcnow
from .settings import Settings, get_settings

log = logging.getLogger(__name__)
JOB_ID_LENGTH = 36  # job ids are uuid4 strings; artifact ids of a job start with <kind>-<job id>


def newest_mtime(path: Path) -> float:
    """The latest modification time in a file or folder tree (0 if it vanished meanwhile)."""
    try:
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for folder, dirs, files in os.walk(path):
                for name in dirs + files:
                    try:
                        newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
                    except FileNotFoundError:
                        pass
        return newest
    except FileNotFoundError:
        return 0.0


def _remove(store: ArtifactStore, path: Path) -> bool:
    trash = store.root / ".trash"
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{path.name}.{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return False  # another worker's sweep got there first
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)
    return True


def _live_tokens(tokens: set[str]) -> set[str]:
    if not tokens:
        return set()
    with db.session() as s:
        return set(s.scalars(select(JobRecord.run_token).where(
            JobRecord.state == "running", JobRecord.run_token.in_(sorted(tokens)))))


def _jobs(job_ids: set[str]) -> dict[str, tuple[str, dt.datetime | None]]:
    if not job_ids:
        return {}
    with db.session() as s:
        return {r.id: (r.state, r.finished_at) for r in s.execute(
            select(JobRecord.id, JobRecord.state, JobRecord.finished_at)
            .where(JobRecord.id.in_(sorted(job_ids))))}


def sweep_staging(store: ArtifactStore, settings: Settings, now: float) -> list[str]:
    staging = store.root / ".staging"
    entries = sorted(staging.iterdir()) if staging.is_dir() else []
    live = _live_tokens({t for t in (run_of(e.name) for e in entries) if t})
    removed = []
    for entry in entries:
        token = run_of(entry.name)
        if token is not None:
            dead = token not in live
        else:
            retention = (settings.scratch_retention if entry.name.startswith("scratch")
                         else settings.staging_retention)
            dead = now - newest_mtime(entry) > retention
        if dead and _remove(store, entry):
            removed.append(f".staging/{entry.name}")
    trash = store.root / ".trash"
    for entry in sorted(trash.iterdir()) if trash.is_dir() else []:
        # Only a crash between a rename into the trash and its removal leaves anything here;
        # a minute's grace lets a removal in progress finish by itself.
        if now - entry.lstat().st_mtime > 60:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(f".trash/{entry.name}")
    return removed


def sweep_checkpoints(store: ArtifactStore, settings: Settings) -> list[str]:
    ids = store.list("checkpoint")
    prefix = len("checkpoint-")
    jobs = _jobs({i[prefix:prefix + JOB_ID_LENGTH] for i in ids})
    keep_after = utcnow() - dt.timedelta(seconds=settings.checkpoint_retention)
    removed = []
    for artifact_id in ids:
        state, finished = jobs.get(artifact_id[prefix:prefix + JOB_ID_LENGTH], (None, None))
        if state is None or state in DELIVERED:
            dead = True  # nobody can resume it; a model supersedes it
        elif state in TERMINAL:
            dead = finished is None or finished < keep_after
        else:
            dead = False
        if dead and store.delete(artifact_id):
            removed.append(artifact_id)
    return removed


def sweep_uploads(store: ArtifactStore, settings: Settings) -> list[str]:
    """The gateway's copy of an upload is read once, by its ingest job, which makes its own."""
    uploads = store.list("dataset", "dataset-upload-")
    if not uploads:
        return []
    with db.session() as s:
        still_read = {params.get("source") for (params,) in s.execute(
            select(JobRecord.params).where(JobRecord.kind == "ingest", JobRecord.state.in_(("queued", "running"))))}
    keep_after = utcnow() - dt.timedelta(seconds=settings.upload_retention)
    removed = []
    for upload in uploads:
        if upload in still_read:
            continue
        try:
            created = dt.datetime.fromisoformat(store.get(upload).created)
        except ArtifactNotFound:
            continue
        if created < keep_after and store.delete(upload):
            removed.append(upload)
    return removed


def sweep_caches(store: ArtifactStore, settings: Settings, now: float) -> list[str]:
    caches = store.root / ".cache"
    removed = []
    for entry in sorted(caches.iterdir()) if caches.is_dir() else []:
        if store.exists(entry.name):
            continue
        if now - newest_mtime(entry) > settings.cache_retention and _remove(store, entry):
            removed.append(f".cache/{entry.name}")
    return removed


def sweep_outcomes(store: ArtifactStore) -> list[str]:
    """Kept outcomes are removed by whoever records them; this catches a crash in between."""
    kept = outcomes.job_ids(store.root)
    jobs = _jobs(set(kept))
    removed = []
    for job_id in kept:
        state, _ = jobs.get(job_id, (None, None))
        if state is None or state in TERMINAL:
            outcomes.forget(store.root, job_id)
            removed.append(f"{outcomes.FOLDER}/{job_id}.json")
    return removed


def sweep(settings: Settings | None = None) -> dict[str, list[str]]:
    """One pass over the artifact store; returns what was removed, by category."""
    settings = settings or get_settings()
    store = ArtifactStore(settings.artifacts)
    if not store.root.is_dir():
        return {}
    now = time.time()
    removed = {"staging": sweep_staging(store, settings, now),
               "checkpoints": sweep_checkpoints(store, settings),
               "uploads": sweep_uploads(store, settings),
               "caches": sweep_caches(store, settings, now),
               "outcomes": sweep_outcomes(store)}
    if any(removed.values()):
        log.info("storage sweep removed %s", ", ".join(f"{len(v)} {k}" for k, v in removed.items() if v))
    return removed
