"""The benchmark suite: `python -m bench` lists the benchmarks, `python -m bench NAME [args...]`
runs bench/NAME.py with the remaining arguments (as `python bench/NAME.py args...` would);
`--quick` is every benchmark's smoke run on tiny data (tests/bench/test_quick.py runs them all).

Each benchmark answers one question a user or maintainer will ask again; docs/BENCHMARKS.md
has the list with commands, docs/RESULTS.md the current figures.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> the question it answers (one line each; keep docs/BENCHMARKS.md in step)
BENCHMARKS: dict[str, str] = {
    "sampler_cost": "what does one MALA / HMC step cost, in decoder forward+backward passes?",
    "likelihood": "held-out log p(x) on digits: plain VAE against MCMC-refined VAEs",
    "fashion": "held-out log p(x) on real Fashion-MNIST at the official code's settings",
    "posterior_quality": "posterior quality, preconditioning and KID of MCMC-refined VAEs (digits, slices, volumes)",
    "adaptation": "does entropy adaptation hold the acceptance target in the default demo model?",
    "cost": "what training one model costs, in time and peak memory, at 32^3 and 64^3",
    "demo_time": "how long `mcvae demo` takes end to end",
    "contention": "how much slower is `mcvae demo` beside one CPU-bound process on every core?",
    "downstream": "do synthetic AD scans help a downstream classifier on the easy demo cohort?",
    "cohort_utility": "which generator helps a classifier on the hard demo cohort (1x / 2x / 5x, against duplicates)?",
    "generators": "which generator helps a classifier on the hard demo cohort; counterfactual effect recovery",
    "fashion_utility": "the same on real Fashion-MNIST at 20 vs 400",
    "difficulty": "how hard is the demo cohort at a given difficulty (real, duplicates, classical, more real)?",
    "shared_fidelity": "do a generator's synthetic AD scans keep the AD signature (reference classifier)?",
    "sampling_variants": "which few-scan sampling distribution (gaussian, mixture, fine detail) helps most?",
    "hierarchy": "are hierarchical (hconv) scans sharper than the conv model's, and as close to real (KID)?",
    "peers": "mcvae against pythae's and MONAI's VAEs on the same data and budget",
    "gpu_throughput": "training steps per second of the resolution profiles on a device (amp, channels-last)",
    "queue_overhead": "what the job queue adds to a small sampling job, and jobs per second",
    "gateway_load": "the REST gateway under 32 concurrent clients: throughput, latency, errors",
    "interactive_latency": "does a synchronous sampling request queue behind ingest jobs?",
    "chaos": "under faults (workers, Redis, the database, bad input), does every job end once; takeover time?",
}


def listing() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["python -m bench NAME [--quick] [args...]   (NAME --help for its options)", ""]
    lines += [f"  {name:<{width}}  {question}" for name, question in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(listing())
        return 0
    name = argv[0].removesuffix(".py")
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{listing()}", file=sys.stderr)
        return 2
    sys.argv = [str(HERE / f"{name}.py"), *argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
