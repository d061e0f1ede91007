"""The workers that ``mcvae serve`` starts beside the gateway when there is no broker.

One worker process per queue (``EMBEDDED_QUEUES``): training and augmentation (``gpu``) in one,
ingest, evaluation and small sampling (``cpu``) in the other, both taking synchronous sampling
first. With a single worker an upload's ``?wait=`` waited behind a training job for about 50
minutes (issue 25); now an ingest waits behind other ingests at most.

The embedded SQLite broker cannot broadcast, so those workers cannot be pinged. ``serve`` records
them in a pid file under the data folder instead, and everything that asks "is a worker up?" on
this deployment reads that one file: the gateway's ``/readyz``, ``mcvae doctor`` and
``mcvae worker-ping``; so they cannot disagree. The file holds a line per worker, its pid and
the process's start time, so a pid reused by another process after a crash is not taken for it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .settings import Settings, get_settings
from .worker import start_worker_process

PID_FILE = "embedded-worker.pid"
EMBEDDED_QUEUES = (("gpu",), ("cpu",))  # one worker process each, in this order


def pid_file(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_dir.expanduser() / PID_FILE


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux); '' where /proc is absent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def start(concurrency: int = 1, device: str | None = None, log_path: str | None = None,
          settings: Settings | None = None) -> list[subprocess.Popen]:
    """Start the embedded workers (``EMBEDDED_QUEUES``, ``concurrency`` processes each, logging
    to ``log_path``) and record them in the pid file."""
    procs = [start_worker_process(queues, concurrency=concurrency, device=device, log_path=log_path)
             for queues in EMBEDDED_QUEUES]
    record([p.pid for p in procs], settings)
    return procs


def record(pids: list[int], settings: Settings | None = None) -> None:
    path = pid_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{pid} {_started(pid)}\n" for pid in pids))


def clear(settings: Settings | None = None) -> None:
    pid_file(settings).unlink(missing_ok=True)


def status(settings: Settings | None = None) -> tuple[bool, str]:
    """(alive, a line saying so) for the embedded workers of this data folder: every one."""
    try:
        lines = [line.split() for line in pid_file(settings).read_text().splitlines() if line.strip()]
        workers = [(int(fields[0]), fields[1] if len(fields) > 1 else "") for fields in lines]
    except (OSError, ValueError, IndexError):
        workers = []
    if not workers:
        return False, "no worker started by `mcvae serve`; start one with `mcvae worker`"
    for pid, started in workers:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False, f"an embedded worker (pid {pid}) has exited"
        except PermissionError:
            pass  # exists, owned by someone else
        if started and _started(pid) != started:
            return False, f"an embedded worker (pid {pid}) has exited (its pid now belongs to another process)"
    return True, f"{len(workers)} embedded worker{'s' if len(workers) > 1 else ''}"
