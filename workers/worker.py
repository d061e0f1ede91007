"""Starting workers: ``run_worker`` (what ``mcvae worker`` calls), ``run_embedded_worker``
(what ``mcvae serve`` calls), and ``start_worker_process`` for a worker beside another program.

    python -m workers --queues gpu --concurrency 1 --hostname gpu1@%h
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

from models.threads import choose_threads, prefer_passive_waiting

from .app import get_app
from .queues import INTERACTIVE, QUEUES
from .settings import get_settings, reset_settings


def run_worker(
    queues: Sequence[str] = QUEUES,
    concurrency: int = 1,
    device: str | None = None,
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker in this process until it is stopped (blocks).

    ``queues``: logical names ``gpu`` and/or ``cpu``. ``device``: ``auto`` (CUDA when present),
    ``cpu``, ``cuda``, ``cuda:1``...; default from MCVAE_DEVICE. ``hostname``: the node name
    shown in job records (``%h`` is replaced by the machine's name); default ``mcvae-<pid>@<host>``.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency: expected >= 1, got {concurrency}")
    if device:
        os.environ["MCVAE_DEVICE"] = device
    # Before torch loads (below): idle OpenMP threads sleep instead of spinning (models/threads.py).
    prefer_passive_waiting()
    # One process per job on a CPU machine should not fight its siblings for cores: the pool's
    # processes share the CPUs this worker may use (affinity, cgroup quota); each applies its
    # share at start (lifecycle._child_init). A user's MCVAE_TORCH_THREADS / OMP_NUM_THREADS wins.
    reset_settings()
    if get_settings().torch_threads == 0:
        os.environ["MCVAE_TORCH_THREADS"] = str(choose_threads(processes=concurrency))
        reset_settings()
    settings = get_settings()
    names = [settings.queue_name(q) for q in queues]
    if not names:
        raise ValueError("queues: name at least one of gpu, cpu")
    if settings.serve_interactive and INTERACTIVE not in queues:
        # First: the worker takes a waiting synchronous request before the next queued job.
        names.insert(0, settings.queue_name(INTERACTIVE))
    # Import the library once here, before the pool forks, so every child starts warm
    # (importing torch does not initialise CUDA, so forking afterwards is safe).
    import models.augment  # noqa: F401  (torch, MONAI, networks; the package itself loads lazily)

    problem = device_problem(settings.device)
    if problem:
        # Refuse to start rather than take gpu jobs it would run on no GPU (or fail).
        print(f"mcvae worker: not starting: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)

    hostname = hostname or f"mcvae-{os.getpid()}@{socket.gethostname()}"
    get_app().worker_main([
        "worker", "--queues", ",".join(names), "--concurrency", str(concurrency),
        "--hostname", hostname, "--loglevel", loglevel, "--pool", "prefork",
        # Gossip and mingle are cluster chatter this service does not use; they slow startup.
        "--without-gossip", "--without-mingle",
    ])


def device_problem(device: str) -> str | None:
    """Why this machine cannot run jobs on ``device`` (MCVAE_DEVICE), or None. ``cuda`` /
    ``cuda:N`` need a visible CUDA GPU (N below the count); ``auto`` and ``cpu`` always run.
    The same check as ``mcvae doctor``'s, made when a worker starts."""
    if not device.startswith("cuda"):
        return None
    import torch  # the worker imports it anyway; only CUDA devices need the look

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return (f"MCVAE_DEVICE={device} but no CUDA GPU is visible (check the driver, CUDA_VISIBLE_DEVICES "
                "or the container's GPU reservation; use MCVAE_DEVICE=cpu or auto on a machine without one)")
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= count):
        return f"MCVAE_DEVICE={device} but this machine shows {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})"
    return None


def run_embedded_worker(concurrency: int = 1, device: str | None = None) -> None:
    """One local worker for every queue: the single-machine set-up (``mcvae serve``).

    With MCVAE_BROKER_URL unset this uses the embedded SQLite broker under MCVAE_DATA_DIR.
    """
    run_worker(QUEUES, concurrency=concurrency, device=device,
               hostname=f"embedded-{os.getpid()}@{socket.gethostname()}")


def start_worker_process(
    queues: Sequence[str] = QUEUES,
    concurrency: int = 1,
    device: str | None = None,
    hostname: str | None = None,
    env: Mapping[str, str] | None = None,
    log_path: str | None = None,
    loglevel: str = "INFO",
) -> subprocess.Popen:
    """Start ``run_worker`` in a child process (its own session, so it can be stopped with its
    pool children as one group). ``env`` adds to this process's environment."""
    argv = [sys.executable, "-m", "workers", "--queues", ",".join(queues),
            "--concurrency", str(concurrency), "--loglevel", loglevel]
    if device:
        argv += ["--device", device]
    if hostname:
        argv += ["--hostname", hostname]
    with open(log_path or os.devnull, "ab") as out:  # the child keeps its own copy of the fd
        return subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def ping_local_workers(timeout: float = 5.0) -> list[str]:
    """Node names of the workers on this machine that answer a ping (a container health check).

    Needs a broker that can broadcast (Redis); the embedded broker cannot, and this raises
    RuntimeError there.
    """
    if get_settings().embedded:
        raise RuntimeError("the embedded broker cannot ping workers; set MCVAE_BROKER_URL")
    suffix = f"@{socket.gethostname()}"
    replies = get_app().control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply if name.endswith(suffix))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=run_worker.__doc__)
    parser.add_argument("--queues", default=",".join(QUEUES), help="comma-separated: gpu,cpu (interactive is added unless MCVAE_SERVE_INTERACTIVE=false)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--hostname", default=None)
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    run_worker([q for q in args.queues.split(",") if q], args.concurrency, args.device,
               args.hostname, args.loglevel)

