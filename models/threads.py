"""How many CPU threads torch may use, chosen in one place for the CLI and the workers.

Why (issue 25, item 3): torch's default is one OpenMP thread per core, and OpenMP's threads spin
at every barrier while they wait for each other. On a machine shared with other busy processes
one of the threads is often descheduled, so every parallel region waits for it while the others
burn their time slices spinning. Measured with a demo-sized training workload (docs/RESULTS.md,
"Contention"): at load 8-13 on 2 cores, 2 spinning threads took 78-150 s and 36-43 CPU-s, 2
passive ones 25-34 s and 8-11 CPU-s, 1 thread 14-23 s and 5-7 CPU-s; nearly alone, 1 and 2
threads took the same 4-5 s (2 at twice the CPU).

So: threads come from the CPUs this process may really use (affinity and cgroup quota), shared
among a worker's pool processes; a VAE training is further capped by its minibatch's size (small
tensors gain nothing from more threads: ``training_threads``), and waiting threads sleep (OMP_WAIT_POLICY=PASSIVE) instead of spinning. A user's
MCVAE_TORCH_THREADS or OMP_NUM_THREADS wins.

Torch-free at import time: the choice is plain arithmetic; only ``use_threads`` loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping
from pathlib import Path

THREADS_ENV = "MCVAE_TORCH_THREADS"  # the same variable the workers' settings read
# Holds cgroup v2's cpu.max ("quota period" or "max period") or v1's cpu/cpu.cfs_quota_us and
# cpu/cpu.cfs_period_us (quota -1: none).
CGROUP = Path("/sys/fs/cgroup")
# Voxels per minibatch that one more thread needs to pay for its synchronisation: the demo
# profile (32^3 x 8 = 262k; a second thread gained nothing there, nearly alone) gets 1 thread,
# the standard one (64^3 x 8 = 2.1M) 2.
VOXELS_PER_THREAD = 1_000_000


def cgroup_cpus(cgroup: Path = CGROUP) -> int | None:
    """Whole CPUs the cgroup's quota allows (at least 1), or None without a quota. Rounded down:
    threads beyond the quota run it out early in each period and then all wait for the next."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(1, int(quota) // int(period))
    except (ValueError, ZeroDivisionError):
        return None  # an unreadable quota limits nothing we can know


def available_cpus(affinity: Iterable[int] | None = None, cgroup: Path = CGROUP) -> int:
    """CPUs this process may run on: its affinity mask, limited by the cgroup's CPU quota."""
    cpus = len(set(affinity)) if affinity is not None else len(os.sched_getaffinity(0))
    quota = cgroup_cpus(cgroup)
    return max(1, min(cpus, quota) if quota else cpus)


def user_threads(environ: MutableMapping[str, str] | None = None) -> int | None:
    """The thread count the user set (MCVAE_TORCH_THREADS, else OMP_NUM_THREADS), or None.
    ValueError, one line, for a value that is not a positive whole number."""
    environ = os.environ if environ is None else environ
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if name == "OMP_NUM_THREADS":
            value = value.split(",")[0].strip()  # OpenMP's "4,2": 4 at the outer level
        if not value or (name == THREADS_ENV and value == "0"):  # 0: "choose for me" (workers' default)
            continue
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{name}={value!r}: expected a whole number of threads >= 1")
        return int(value)
    return None


def choose_threads(processes: int = 1, environ: MutableMapping[str, str] | None = None,
                   affinity: Iterable[int] | None = None, cgroup: Path = CGROUP) -> int:
    """Torch threads for each of ``processes`` processes sharing this machine's CPUs (a worker's
    pool). The user's setting wins (see user_threads); a training caps its own (training_threads)."""
    if processes < 1:
        raise ValueError(f"processes: expected >= 1, got {processes}")
    chosen = user_threads(environ)
    if chosen is not None:
        return chosen
    return max(1, available_cpus(affinity, cgroup) // processes)


def cap_for_work(threads: int, work_voxels: int | None) -> int:
    """At most one thread per VOXELS_PER_THREAD voxels of a minibatch (None: no cap), at least 1."""
    if work_voxels is None:
        return threads
    return max(1, min(threads, work_voxels // VOXELS_PER_THREAD))


def prefer_passive_waiting(environ: MutableMapping[str, str] | None = None) -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose a policy (on a
    machine of its own, OMP_WAIT_POLICY=ACTIVE runs 2+ threads faster: about 1.6x at 32^3). Only
    has effect before torch is first imported (OpenMP reads it when it loads): call it first."""
    (os.environ if environ is None else environ).setdefault("OMP_WAIT_POLICY", "PASSIVE")


def training_threads(current: int, work_voxels: int | None) -> int:
    """Threads for a VAE training of ``work_voxels`` voxels per minibatch in a process that has
    ``current`` (the CPUs it may use, a worker pool process's share, or MCVAE_TORCH_THREADS /
    OMP_NUM_THREADS): ``current`` capped by the work's size. Only the config's ``train.threads``
    overrides the cap (Trainer.fit): the environment sets the process's count, which a worker also
    passes its pool this way. The cap is for training alone: the process keeps ``current``, and
    the report's classifiers use all of it, one thread per classifier side by side
    (``models.checks.ClassifierPool``), the CPUs the cap leaves idle while the model trains
    (``spare_threads``)."""
    return cap_for_work(current, work_voxels)


def spare_threads(current: int, configured: int | None, work_voxels: int | None) -> int:
    """Threads that a VAE training leaves idle in a process of ``current`` threads: its own count
    is ``configured`` (the config's ``train.threads``) or ``training_threads``. The augment report
    trains its real-only classifiers on them meanwhile (``models.checks``); 0 when none are idle."""
    training = configured if configured is not None else training_threads(current, work_voxels)
    return max(0, current - training)


def use_threads(threads: int) -> int:
    """Set torch's intra-op thread count for this process; returns it."""
    import torch  # local: choosing threads must not load torch (the gateway imports this module)

    torch.set_num_threads(threads)
    return threads
