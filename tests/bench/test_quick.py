"""`python -m bench NAME --quick` for every registered benchmark: each runs its own code path end to
end on tiny data and must exit 0 having printed its table, so that none of them rots unnoticed.
Slow (7.7 min for all on 2 busy cores, 3.7 min of CPU: docs/BENCHMARKS.md); `make test` (CI) runs them."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FLOAT = r"-?\d+\.\d+"

# A line each quick run must print: a row of its table or its summary, figures included.
PRINTS = {
    "sampler_cost": rf"^MALA step, adaptation frozen +{FLOAT} +{FLOAT}$",
    "likelihood": rf"^MALA entropy \(diag\) +{FLOAT} ± {FLOAT} +\(MCMC proposal +{FLOAT}\)",
    "fashion": rf"^mala_entropy +1 +{FLOAT} ± +{FLOAT}",
    "posterior_quality": rf"^\| \[4,2\] \| MALA entropy \(full\) \| {FLOAT} ± {FLOAT} \|",
    "adaptation": rf"^seed 0: final acceptance {FLOAT} \(last 10%\)",
    "cost": rf"^MALA x5 \(entropy, diag\) +16\^3 +{FLOAT} +{FLOAT}",
    "demo_time": rf"^mcvae demo: {FLOAT} s wall clock",
    "downstream": rf"^\| MCMC-VAE 1x \| 2 \| {FLOAT} ± {FLOAT} \|",
    "cohort_utility": rf"^\| shared MCMC-HVAE 1x \| .*{FLOAT}",
    "generators": rf"^\| counterfactual MCMC 1x \| .*{FLOAT}",
    "fashion_utility": rf"^\| counterfactual MCMC 1x \| .*{FLOAT}",
    "difficulty": rf"^\| d=0.6 classical 1x \| {FLOAT} ± {FLOAT} \| {FLOAT} ± {FLOAT} \|$",
    "shared_fidelity": rf"^\| shared hconv mcmc \| {FLOAT} \| {FLOAT} \|",
    "sampling_variants": rf"^\| .*fine_detail.* \| .*{FLOAT}",
    "hierarchy": rf"^\| hconv shared \| .*{FLOAT}",
    "peers": rf"^\| MCMC-VAE aggregate \| .*{FLOAT}",
    "gpu_throughput": rf"^\| standard \| 16x16x16 \| 2 \| off \| off \| {FLOAT} \| {FLOAT} \|",
    "queue_overhead": rf"^queue overhead \(median difference\) +{FLOAT} ms",
    "gateway_load": rf"^requests per second +{FLOAT}$",
    "interactive_latency": rf"^interactive queue +\d+ +{FLOAT} +{FLOAT}",
    "chaos": r"^worker killed for good +\d+ +\d+ +0 +0 ",
    "contention": rf"^ratio {FLOAT} \(",
}
# Quick runs of minutes (a fleet of processes, or a demo run twice): past the suite's budget, so
# they run when asked, as .ci/run does after the suite, with room for a busy machine.
LONG = {"chaos": "MCVAE_BENCH_CHAOS", "contention": "MCVAE_BENCH_CONTENTION"}


def _missing(name: str) -> str | None:
    """What this machine lacks for the benchmark's quick run, if anything."""
    if name in ("fashion", "fashion_utility") and not FASHION_MNIST.is_dir():
        return f"Fashion-MNIST is not in {FASHION_MNIST} (apt-get install dataset-fashion-mnist)"
    if name == "peers" and importlib.util.find_spec("pythae") is None:
        return "pythae is not installed (pip install -e '.[peers]')"
    if name in LONG and not os.environ.get(LONG[name]):
        # chaos: three training jobs, fault scenarios and leases to wait out (4.5 min on 2 busy cores);
        # contention: a short demo alone, then beside a busy loop per CPU (3.5 + 8.5 min at load 5-7)
        return f"{name} --quick takes minutes, past the suite's budget ({LONG[name]}=1 runs it)"
    if name == "chaos" and shutil.which("redis-server") is None:
        return "redis-server is not installed (chaos runs a private one it can kill)"
    return None


def test_every_benchmark_says_what_its_quick_run_prints():
    assert set(PRINTS) == set(BENCHMARKS), "add the benchmark's --quick table line to PRINTS"


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_quick_run_prints_its_table(name):
    missing = _missing(name)
    if missing:
        pytest.skip(missing)
    # one thread: two threads on a busy 2-core machine (CI runs other tests beside) crawl
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "bench", name, "--quick"], cwd=ROOT, capture_output=True, check=False,
                          text=True, timeout=1400 if name in LONG else 280, env=env)
    tail = f"\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, tail
    assert re.search(PRINTS[name], done.stdout, re.MULTILINE), f"no line matching {PRINTS[name]!r}{tail}"
