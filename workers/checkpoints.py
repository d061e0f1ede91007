"""Training checkpoints of one job in the artifact store: ``checkpoint-<job>-<step>``.

Each checkpoint is written once, atomically (``torch.save`` into the store's staging folder,
then a rename), so a worker killed mid-write leaves the previous one intact. The newest two are
kept: a resume takes the newest that passes its checksum.
"""

from __future__ import annotations

import logging
from typing import Any

from .artifacts import ArtifactStore

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


class Checkpoints:
    def __init__(self, store: ArtifactStore, job_id: str, keep: int = 2):
        self.store, self.job_id, self.keep = store, job_id, keep
        self.prefix = f"checkpoint-{job_id}-"

    def ids(self) -> list[str]:
        """Oldest first (the zero-padded step sorts numerically)."""
        return self.store.list("checkpoint", self.prefix)

    @staticmethod
    def step_of(artifact_id: str) -> int:
        return int(artifact_id.rsplit("-", 1)[1])

    def save(self, state: dict[str, Any]) -> str:
        import torch

        step = int(state["global_step"])
        artifact_id = f"{self.prefix}{step:09d}"
        with self.store.writer("checkpoint", artifact_id, meta={"job": self.job_id, "step": step},
                               file=STATE_FILE, replace=True) as staging:
            torch.save(state, staging / STATE_FILE)
        for old in self.ids()[: -self.keep]:
            self.store.delete(old)
        return artifact_id

    def latest(self) -> str | None:
        for artifact_id in reversed(self.ids()):
            if self.store.verify(artifact_id):
                return artifact_id
            log.warning("checkpoint %s fails its checksum; trying an older one", artifact_id)
        return None

    def load(self, artifact_id: str, device: str) -> dict[str, Any]:
        import torch

        # weights_only: a checkpoint is tensors and plain containers, never arbitrary objects.
        return torch.load(self.store.path(artifact_id), map_location=device, weights_only=True)
