"""Training throughput (steps per second) of the resolution profiles on one device, with bf16
autocast and channels-last memory format on and off (issue 12, item 5).

For each profile (models/profiles.py: ``standard`` 64^3, ``research`` 96 x 112 x 96) and each
(amp, channels_last) pair, a Trainer with the profile's model, sampler and batch size runs one
epoch of plain-ELBO steps (phase 1) and one of MCMC-refined steps (phase 2, the profile's
sampler: MALA, 5 transitions per step) on random volumes; the first ``--warmup`` steps of each
phase are left out of the timing (cuDNN autotuning, allocator growth, and in phase 2 entropy
adaptation's warm start of the step size). Each step is timed to the end of its device work
(``torch.cuda.synchronize``), including the minibatch's copy to the device, as in training.

    python bench/gpu_throughput.py --device cuda                         # both profiles, 4 settings each
    python bench/gpu_throughput.py --device cpu --steps 2 --shape 16 16 16   # a smoke check on a CPU

Prints a markdown table and writes bench/results/<--name>.json (after every row, so a run cut
short keeps what it measured). On a CPU, amp has no effect (Trainer autocasts on CUDA only).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, parse_args, write_result
from models import ModelConfig, Trainer, build_model, build_sampler
from models.options import AugmentConfig
from models.profiles import profile_settings

PROFILES = ("standard", "research")
SWITCH = {"on": (True,), "off": (False,), "both": (False, True)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}, {torch.get_num_threads()} torch threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(profile: str, device: torch.device, amp: bool, channels_last: bool, steps: int, warmup: int,
            shape: tuple[int, ...] | None = None, batch: int | None = None) -> dict:
    """Steps per second of phase 1 (plain ELBO) and phase 2 (MCMC) of one profile and setting."""
    train = {"device": str(device), "amp": amp, "channels_last": channels_last}
    if batch is not None:
        train["batch_size"] = batch
    settings = profile_settings(profile, {"train": train})
    if shape is not None:
        settings["preprocess"]["target_shape"] = list(shape)
    config = AugmentConfig(**settings)
    grid = tuple(settings["preprocess"]["target_shape"])
    model_cfg = ModelConfig(data_shape=(1, *grid), **config.model.model_dump())
    per_phase = warmup + steps
    batch_size = config.train.batch_size
    x = torch.rand(per_phase * batch_size, 1, *grid, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model(model_cfg)
    sampler = build_sampler(config.sampler, model.latent_dim)
    train_cfg = config.train.model_copy(update={"pretrain_epochs": 1, "epochs": 1, "seed": 0})
    trainer = Trainer(model, sampler, x, train_cfg)
    assert trainer.steps_per_epoch == per_phase
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    marks: list[float] = []

    def on_step(done: int, total: int) -> None:
        _sync(device)
        marks.append(time.perf_counter())

    _sync(device)
    marks.append(time.perf_counter())  # before the first step
    history = trainer.fit(on_step=on_step)
    # marks[i] ends step i (from 1); a phase's steps are 1..per_phase, per_phase+1..2 per_phase
    seconds = [b - a for a, b in itertools.pairwise(marks)]
    plain, mcmc = seconds[warmup:per_phase], seconds[per_phase + warmup:]
    row = {
        "profile": profile, "grid": list(grid), "batch": batch_size, "amp": amp, "channels_last": channels_last,
        "memory_format": str(trainer.memory_format) if trainer.memory_format else "contiguous",
        "timed_steps": steps, "warmup_steps": warmup,
        "mcmc_transitions_per_step": config.sampler.n_steps, "sampler": config.sampler.kind,
        "plain_steps_per_s": len(plain) / sum(plain),
        "mcmc_steps_per_s": len(mcmc) / sum(mcmc),
        "plain_step_s": sorted(plain), "mcmc_step_s": sorted(mcmc),
        "elbo": [r.elbo for r in history.records],
    }
    row["plain_scans_per_s"] = row["plain_steps_per_s"] * batch_size
    row["mcmc_scans_per_s"] = row["mcmc_steps_per_s"] * batch_size
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def table(rows: list[dict]) -> str:
    lines = [("| profile | grid | batch | amp | channels_last | plain steps/s | MCMC steps/s | plain scans/s "
              "| MCMC scans/s | peak GiB |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_memory_gib']:.2f}" if "peak_memory_gib" in r else "-"
        lines.append(f"| {r['profile']} | {'x'.join(map(str, r['grid']))} | {r['batch']} | "
                     f"{'bf16' if r['amp'] else 'off'} | {'on' if r['channels_last'] else 'off'} | "
                     f"{r['plain_steps_per_s']:.2f} | {r['mcmc_steps_per_s']:.2f} | {r['plain_scans_per_s']:.1f} | "
                     f"{r['mcmc_scans_per_s']:.1f} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=PROFILES)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each phase (>= 1)")
    ap.add_argument("--amp", choices=SWITCH, default=None, help="bf16 autocast: on, off, both "
                    "(default: both on CUDA, off elsewhere, where it has no effect)")
    ap.add_argument("--channels-last", choices=SWITCH, default="both")
    ap.add_argument("--shape", type=int, nargs="+", default=None,
                    help="override the profiles' grid, e.g. 16 16 16 for a quick check")
    ap.add_argument("--batch", type=int, default=None, help="override the profiles' batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new setting after this many seconds (the rows so far are kept)")
    ap.add_argument("--name", default=None, help="result file name (default gpu_throughput_<device type>)")
    # --quick: one small setting, on the CPU where no GPU is (the same code path)
    args = parse_args(ap, {"profiles": ["standard"], "steps": 1, "warmup": 1, "channels_last": "off",
                           "shape": [16, 16, 16], "batch": 2})
    if args.warmup < 1 or args.steps < 1:
        ap.error("--steps and --warmup must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is false on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    amps = SWITCH[args.amp or ("both" if device.type == "cuda" else "off")]
    name = args.name or f"gpu_throughput_{device.type}"
    payload = {
        "device": device_name(device), "machine": machine(str(device)), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "rows": [], "skipped": [],
    }
    print(f"device: {payload['device']} (torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)
    started = time.perf_counter()
    for profile in args.profiles:
        for amp in amps:
            for channels_last in SWITCH[args.channels_last]:
                setting = {"profile": profile, "amp": amp, "channels_last": channels_last}
                if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                    payload["skipped"].append({**setting, "why": f"--budget-s {args.budget_s:g} s spent"})
                    continue
                try:
                    row = measure(profile, device, amp, channels_last, args.steps, args.warmup,
                                  tuple(args.shape) if args.shape else None, args.batch)
                except torch.cuda.OutOfMemoryError as err:
                    payload["skipped"].append({**setting, "why": f"out of memory: {err}"[:300]})
                    torch.cuda.empty_cache()
                    continue
                payload["rows"].append(row)
                print(f"{profile} amp={amp} channels_last={channels_last}: "
                      f"{row['plain_steps_per_s']:.2f} plain, {row['mcmc_steps_per_s']:.2f} MCMC steps/s", flush=True)
                write_result(name, payload)
    payload["seconds"] = time.perf_counter() - started
    out = write_result(name, payload)
    print(f"\n{payload['device']}, torch {torch.__version__}; {args.steps} timed steps per phase after "
          f"{args.warmup} warm-up steps\n")
    print(table(payload["rows"]))
    for s in payload["skipped"]:
        print(f"skipped: {s}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
