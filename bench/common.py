"""Shared helpers for benchmark scripts: machine description, result files, and ``--quick``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

# A --quick run is a smoke test whose figures mean nothing: its files go beside, never over, the
# full runs' (read here, at import, because scripts import RESULTS before they parse arguments).
RESULTS = Path(__file__).resolve().parent / "results" / ("quick" if "--quick" in sys.argv[1:] else "")

# --quick's training budget for every generative model (AugmentConfig fields): a few optimiser
# steps of each phase and no retraining, enough to run every line of the pipeline. Near-copies are
# kept: a model of a few steps draws little but near-copies, and redrawing would leave none.
QUICK_BUDGET = {"pretrain_steps": 4, "mcmc_steps": 2, "retrains": 0, "near_copies": "keep"}


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's word for it. Training on two different
    CPUs of one architecture can diverge in the last float bits and then chaotically: a seed's
    model is only reproducible on the same CPU model (docs/RESULTS.md, session 9)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cores = os.cpu_count()
    return f"{platform.machine()} {cpu_model()} CPU x{cores} threads={torch.get_num_threads()}, torch {torch.__version__}"


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), **payload}
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(payload, indent=2))
    return out


def timed(fn, repeats: int, warmup: int = 2, sync=None) -> list[float]:
    """Wall-clock seconds of fn() over repeats (after warm-up)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times


def parse_args(parser: argparse.ArgumentParser, quick: dict[str, object]) -> argparse.Namespace:
    """``parser.parse_args()`` plus ``--quick``: the same code path end to end on tiny data (one
    seed, few steps; about 20 s on 2 cores), for the test suite. ``quick`` maps option names
    (dests) to their quick values; an option given on the command line keeps its value."""
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of the same code path on tiny data (figures mean nothing; "
                             "results in bench/results/quick/)")
    args = parser.parse_args()
    unknown = set(quick) - set(vars(args))
    if unknown:
        raise KeyError(f"quick settings for options the parser lacks: {sorted(unknown)}")
    if args.quick:
        for dest, value in quick.items():
            if getattr(args, dest) == parser.get_default(dest):
                setattr(args, dest, value)
    return args


def budget(config, quick: bool):
    """``config`` (an AugmentConfig) with QUICK_BUDGET's step budget when ``quick``."""
    return config.model_copy(update=QUICK_BUDGET) if quick else config
