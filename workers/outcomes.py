"""A finished run's outcome, kept on the artifact volume until the job record holds it.

A job's artifacts are in place before its end is recorded. Should the database be unreachable
at that moment, running the job again would redo all its work for nothing. So a run first keeps
its outcome here (``<artifacts>/.outcomes/<job id>.json``, written atomically), then records it
(retrying with back-off while its heartbeat keeps its lease; runner.py), then removes the file.
Whoever later finds the run dead (recovery.py, or a redelivered message's claim) records the
kept outcome instead of running the job again. The sweeper removes files of jobs already ended.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
FOLDER = ".outcomes"


def path(root: Path, job_id: str) -> Path:
    return Path(root) / FOLDER / f"{job_id}.json"


def keep(root: Path, job_id: str, outcome: dict[str, Any]) -> bool:
    """Write ``outcome`` (the arguments of runner.finish, plus ``obsolete``) for ``job_id``.

    False when the volume refused: the outcome is then only recorded, not kept (it is a
    safeguard against re-running, and the job's own end must not fail for want of it)."""
    target = path(root, job_id)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w") as fh:
            json.dump(outcome, fh)
            fh.flush()
            os.fsync(fh.fileno())  # on the volume before the record can point past it
        os.replace(partial, target)
        return True
    except OSError:
        log.warning("job %s: could not keep its outcome on the volume", job_id, exc_info=True)
        partial.unlink(missing_ok=True)
        return False


def read(root: Path, job_id: str) -> dict[str, Any] | None:
    """The kept outcome of ``job_id``, or None (none kept, or unreadable: then it is re-run)."""
    try:
        with open(path(root, job_id)) as fh:
            kept = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("job %s: its kept outcome is unreadable; ignored", job_id, exc_info=True)
        return None
    return kept if isinstance(kept, dict) and kept.get("state") else None


def forget(root: Path, job_id: str) -> None:
    path(root, job_id).unlink(missing_ok=True)


def job_ids(root: Path) -> list[str]:
    """Jobs with a kept outcome (for the sweeper)."""
    folder = Path(root) / FOLDER
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
