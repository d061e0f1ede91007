"""What a running job can do besides its work: report progress and stage, log, record metrics,
and notice that it should stop. Handlers see only this interface.

``JobContext`` keeps everything in memory, which is what an in-process run (tests, benchmarks,
the CLI without a queue) needs; ``runner.RecordedContext`` writes the same calls to the job
record and its event log.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import ArtifactStore
from .settings import Settings, get_settings


class JobCancelled(Exception):
    """The job should stop (a cancel request, or its run was taken over by another worker)."""


@dataclass
class Outcome:
    """What a handler returns: metrics for the record and the artifacts it produced."""

    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    message: str = "done"
    obsolete: list[str] = field(default_factory=list)  # deleted once success is recorded
    state: str = "succeeded"  # or "partial" (workers.records.DELIVERED)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def json_safe(value: Any) -> Any:
    """Records are JSON: NaN/inf become None (PostgreSQL's json type refuses them), tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return json_safe(value.item())
    return value


class JobContext:
    def __init__(self, job_id: str, store: ArtifactStore, device: str = "cpu",
                 settings: Settings | None = None):
        self.job_id, self.store, self.settings = job_id, store, settings or get_settings()
        self.device = resolve_device(device)
        self.stage = "starting"
        self.fraction = 0.0
        self.metrics: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self._cancel = threading.Event()

    # -- reporting ---------------------------------------------------------------------------
    def progress(self, fraction: float, stage: str | None = None, force: bool = False) -> None:
        """Progress only rises: a resumed or re-run stage never moves the bar backwards.

        Recorded at most every MCVAE_PROGRESS_INTERVAL seconds unless ``force``; a stage that
        ends sooner than that is simply not seen, which is fine for a progress bar.
        """
        fraction = max(self.fraction, min(1.0, max(0.0, float(fraction))))
        self.fraction, self.stage = fraction, stage or self.stage
        self._record_progress(force)

    def log(self, message: str, level: str = "info") -> None:
        self._record_event(message, level)

    def update_metrics(self, **values: Any) -> None:
        self.metrics.update(json_safe(values))
        self._record_metrics()

    def cache_dir(self, dataset_id: str) -> Path:
        """Preprocessed tensors of a dataset, shared by every job (and worker) that reads it."""
        return self.store.root / ".cache" / dataset_id

    # -- stopping ----------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    def should_stop(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self.should_stop():
            raise JobCancelled("cancelled")

    # -- storage (overridden by the recorded context) -------------------------------------------
    def _record_progress(self, force: bool) -> None:
        self.events.append({"stage": self.stage, "progress": self.fraction, "message": ""})

    def _record_event(self, message: str, level: str) -> None:
        self.events.append({"stage": self.stage, "progress": self.fraction, "message": message,
                            "level": level})

    def _record_metrics(self) -> None:
        pass
