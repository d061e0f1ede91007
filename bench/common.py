"""Shared helpers for benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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
