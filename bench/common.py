"""Shared helpers for benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cores = os.cpu_count()
    return f"{platform.processor() or platform.machine()} CPU x{cores} threads={torch.get_num_threads()}, torch {torch.__version__}"


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
