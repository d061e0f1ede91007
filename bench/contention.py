"""`mcvae demo` alone, then beside one CPU-bound process on every core: both times and their ratio.

Goal (issue 25, item 3): at most 2.5x. Before models/threads.py, torch's spinning OpenMP threads
(one per core) made a demo beside other work many times slower than alone, and burn several
times the CPU. Each run is the real console command in a fresh folder; the busy processes are
`python -c "while True: pass"`, one per CPU this process may use (models/threads.py), started
just before the second run and stopped right after it. The CPU time of each run (the demo
process and its children) is printed too: a ratio far above the wall-clock one means spinning.

    python -m bench contention [--quick] [--busy N] [--threads N] [--wait-policy ACTIVE]

--quick: a short demo (fewer scans and steps, no utility check), about a minute alone on 2
cores. --threads / --wait-policy set MCVAE_TORCH_THREADS / OMP_WAIT_POLICY for both runs, e.g.
`--threads 2 --wait-policy ACTIVE` for torch's old behaviour on 2 cores. Run it on a quiet
machine: the load average before each run is printed, since other work skews both times.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, write_result
from models.threads import available_cpus

GOAL_RATIO = 2.5
# --quick: aggregate draws, since a model of 75 steps can move a variation (the default generator)
# too little from its subject to deliver it (then the demo ends partial, exit 3)
QUICK_FLAGS = ["--n-control", "12", "--n-ad", "4", "--pretrain-steps", "60", "--mcmc-steps", "15",
               "--no-check-utility", "--generator", "aggregate"]
BUSY_LOOP = "while True: pass"


def run_demo(flags: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one `mcvae demo` in a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix="mcvae-contention-"))
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "mcvae_cli.main", "demo", "--out", str(out / "demo"), *flags],
                              env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        raise SystemExit(f"mcvae demo failed with exit code {proc.returncode}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return seconds, cpu


def beside_busy(n_busy: int, flags: list[str], env: dict[str, str]) -> tuple[float, float]:
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n_busy)]
    try:
        time.sleep(1.0)  # let them take their cores first
        return run_demo(flags, env)
    finally:
        for proc in busy:  # only the processes started here
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short demo instead of the full one")
    parser.add_argument("--busy", type=int, default=None,
                        help="CPU-bound processes beside the second run (default: one per available CPU)")
    parser.add_argument("--threads", type=int, help="MCVAE_TORCH_THREADS for both runs (default: mcvae's choice)")
    parser.add_argument("--wait-policy", help="OMP_WAIT_POLICY for both runs (default: mcvae's, PASSIVE)")
    args = parser.parse_args()
    n_busy = args.busy if args.busy is not None else available_cpus()
    flags = QUICK_FLAGS if args.quick else []
    env = dict(os.environ)
    if args.threads:
        env["MCVAE_TORCH_THREADS"] = str(args.threads)
    if args.wait_policy:
        env["OMP_WAIT_POLICY"] = args.wait_policy

    what = "mcvae demo" + (" " + " ".join(flags) if flags else "")
    load_alone = os.getloadavg()
    alone, alone_cpu = run_demo(flags, env)
    print(f"alone:              {alone:7.1f} s wall, {alone_cpu:7.1f} s CPU (load before {load_alone[0]:.2f})",
          flush=True)
    load_busy = os.getloadavg()
    busy, busy_cpu = beside_busy(n_busy, flags, env)
    ratio = busy / alone
    print(f"beside {n_busy} busy loop(s): {busy:7.1f} s wall, {busy_cpu:7.1f} s CPU (load before {load_busy[0]:.2f})")
    verdict = "meets" if ratio <= GOAL_RATIO else "misses"
    print(f"ratio {ratio:.2f} ({verdict} the goal of {GOAL_RATIO}); CPU ratio {busy_cpu / alone_cpu:.2f}")
    where = machine("cpu").rsplit(" threads=", 1)[0] + f", {available_cpus()} available CPU(s)"
    print(f"{what} on {where}")
    path = write_result("contention_quick" if args.quick else "contention", {
        "machine": where, "command": what, "busy_processes": n_busy,
        "threads": args.threads, "wait_policy": args.wait_policy,
        "alone_s": alone, "alone_cpu_s": alone_cpu, "load_before_alone": load_alone[0],
        "beside_busy_s": busy, "beside_busy_cpu_s": busy_cpu, "load_before_busy": load_busy[0],
        "ratio": ratio, "goal_ratio": GOAL_RATIO})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
