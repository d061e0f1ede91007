"""The worker that ``mcvae serve`` starts beside the gateway when there is no broker.

The embedded SQLite broker cannot broadcast, so that worker cannot be pinged. ``serve`` records
it in a pid file under the data folder instead, and everything that asks "is a worker up?" on
this deployment reads that one file: the gateway's ``/readyz``, ``mcvae doctor`` and
``mcvae worker-ping``; so they cannot disagree. The file holds the pid and the process's start
time, so a pid reused by another process after a crash is not taken for the worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from .settings import Settings, get_settings

PID_FILE = "embedded-worker.pid"


def pid_file(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_dir.expanduser() / PID_FILE


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux); '' where /proc is absent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def record(pid: int, settings: Settings | None = None) -> None:
    path = pid_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {_started(pid)}\n")


def clear(settings: Settings | None = None) -> None:
    pid_file(settings).unlink(missing_ok=True)


def status(settings: Settings | None = None) -> tuple[bool, str]:
    """(alive, a line saying so) for the embedded worker of this data folder."""
    try:
        fields = pid_file(settings).read_text().split()
        pid, started = int(fields[0]), fields[1] if len(fields) > 1 else ""
    except (OSError, ValueError, IndexError):
        return False, "no worker started by `mcvae serve`; start one with `mcvae worker`"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, "the embedded worker has exited"
    except PermissionError:
        pass  # exists, owned by someone else
    if started and _started(pid) != started:
        return False, "the embedded worker has exited (its pid now belongs to another process)"
    return True, "1 embedded worker"
