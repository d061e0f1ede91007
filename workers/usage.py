"""How much storage each lab's jobs hold: bytes of datasets, models, outputs, reports,
checkpoints and not-yet-ingested upload copies, from the artifact manifests (no tree walks)."""

from __future__ import annotations

from sqlalchemy import select

from . import db
from .artifacts import ArtifactNotFound, ArtifactStore, kind_of
from .records import JobRecord
from .settings import get_settings

CATEGORIES = ("datasets", "models", "outputs", "reports", "checkpoints", "uploads")


def storage(owner: str) -> dict[str, int]:
    """Bytes per category for the artifacts of ``owner``'s jobs, and their ``total``."""
    store = ArtifactStore(get_settings().artifacts)
    with db.session() as s:
        jobs = list(s.execute(select(JobRecord.id, JobRecord.artifacts, JobRecord.params)
                              .where(JobRecord.owner == owner)))
    figure = dict.fromkeys(CATEGORIES, 0)

    def add(category: str, artifact_id: str) -> None:
        try:
            figure[category] += store.get(artifact_id).size
        except (ArtifactNotFound, ValueError):
            pass  # deleted meanwhile, or not an artifact id

    ids = {job_id for job_id, _, _ in jobs}
    for _, artifacts, params in jobs:
        for artifact_id in artifacts or []:
            add(f"{kind_of(artifact_id)}s", artifact_id)
        source = (params or {}).get("source")
        if isinstance(source, str) and source.startswith("dataset-upload-"):
            add("uploads", source)
    prefix = len("checkpoint-")
    for checkpoint in store.list("checkpoint"):
        if checkpoint[prefix:prefix + 36] in ids:
            add("checkpoints", checkpoint)
    figure["total"] = sum(figure.values())
    return figure
