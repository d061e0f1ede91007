"""Experiment 6: what training an MCMC-refined VAE costs, in time and peak memory.

For each model (plain VAE, MALA- and HMC-refined VAE, a 3-layer hierarchical VAE with MALA)
and each volume size (32^3, 64^3), a fresh process trains on random volumes with the
augmentation defaults (conv channels 8/16/32, batch 8, 5 MCMC steps per encoder draw) and
reports:
- seconds per optimiser step in phase 1 (plain ELBO) and phase 2 (decoder on MCMC end states,
  sampler on the speed measure), medians over the timed steps;
- the sampler's overhead: phase-2 step / a warm plain-ELBO step (the plain VAE's phase-2 step
  of the same size), and seconds per MCMC step;
- the projected time of the default augmentation budget (600 phase-1 + 150 phase-2 steps);
- peak memory: the process's peak resident set size above what it held before training
  (CPU), or torch.cuda.max_memory_allocated (CUDA).
Each configuration runs in its own process so that peaks do not mix.

    python bench/cost.py [--sizes 32 64] [--device cpu] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RESULTS, machine, parse_args, write_result

MODELS = {
    "plain VAE": {"latent_dims": [16], "sampler": {"kind": "none"}},
    "MALA x5 (entropy, diag)": {"latent_dims": [16], "sampler": {"kind": "mala", "n_steps": 5}},
    "HMC x5, L=3 (entropy, diag)": {"latent_dims": [16], "sampler": {"kind": "hmc", "n_steps": 5, "n_leapfrog": 3}},
    "HVAE [16,8,4] + MALA x5 (full)": {"latent_dims": [16, 8, 4],
                                       "sampler": {"kind": "mala", "n_steps": 5, "preconditioner": "full"}},
}
DEFAULT_BUDGET = (600, 150)  # AugmentConfig: pretrain_steps, mcmc_steps


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_one(name: str, size: int, device: str, steps: int, batch: int) -> dict:
    """Train one configuration in this process; return its per-step times and memory."""
    from models import ModelConfig, SamplerConfig, TrainConfig, build_model, build_sampler
    from models.training import Trainer

    spec = MODELS[name]
    torch.manual_seed(0)
    shape = (1, size, size, size)
    mcfg = ModelConfig(data_shape=shape, arch="conv", latent_dims=spec["latent_dims"],
                       channels=(8, 16, 32), obs_log_var=-4.0)
    scfg = SamplerConfig(**{"adaptation": "entropy", "preconditioner": "diag", **spec["sampler"]})
    # Smooth random volumes in [0, 1] (cost does not depend on content).
    data = torch.nn.functional.avg_pool3d(torch.rand(steps * batch, *shape), 5, 1, 2)
    model, sampler = build_model(mcfg), build_sampler(scfg, mcfg.latent_dim)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = _peak_rss_bytes()
    # One epoch of each phase = `steps` optimiser steps each.
    trainer = Trainer(model, sampler, data, TrainConfig(pretrain_epochs=1, epochs=1, batch_size=batch,
                                                        lr=2e-3, device=device, seed=0))
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(done: int, total: int) -> None:
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    trainer.fit(on_step=on_step)
    phase1, phase2 = step_times[:steps], step_times[steps:]
    skip = 2  # warm-up steps (allocator, first kernels)
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes() - rss_before
    # Raw measurements only: ratios and projections are derived in main(), across configurations.
    return {
        "model": name, "size": size, "batch": batch, "latent_dim": mcfg.latent_dim,
        "phase1_step_s": statistics.median(phase1[skip:]), "phase2_step_s": statistics.median(phase2[skip:]),
        "peak_memory_mib": peak / 2**20,
        "memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS above pre-training baseline",
        "final_accept": trainer.history.records[-1].accept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=12, help="timed optimiser steps per phase")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--report", type=Path, help="re-print the table and plot of a saved run's JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration
    args = parse_args(parser, {"sizes": [16], "models": ["plain VAE", "MALA x5 (entropy, diag)"], "steps": 3,
                               "batch": 2})
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.one:
        name, size = args.one.rsplit("@", 1)
        print(json.dumps(measure_one(name, int(size), args.device, args.steps, args.batch)))
        return

    rows = []
    if args.report:
        saved = json.loads(args.report.read_text())
        rows, args.steps = saved["rows"], saved["steps"]
    for size in args.sizes if not args.report else []:
        for name in args.models:
            cmd = [sys.executable, __file__, "--one", f"{name}@{size}", "--device", args.device,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  {name} @ {size}^3: {row['phase1_step_s']:.3f} s / {row['phase2_step_s']:.3f} s per step, "
                  f"peak {row['peak_memory_mib']:.0f} MiB", flush=True)

    # Phase-1 medians carry warm-up effects (first use of each kernel and buffer size); the plain
    # VAE's phase 2 is the same plain-ELBO step, warm, so it is the reference where measured.
    for r in rows:
        ref = next((p["phase2_step_s"] for p in rows if p["size"] == r["size"] and p["model"] == "plain VAE"),
                   r["phase1_step_s"])
        r["elbo_step_ref_s"] = ref
        r["phase2_over_elbo_step"] = r["phase2_step_s"] / ref
        r["default_budget_s"] = DEFAULT_BUDGET[0] * ref + DEFAULT_BUDGET[1] * r["phase2_step_s"]
        n_mcmc = MODELS[r["model"]]["sampler"].get("n_steps", 0)
        r["per_mcmc_step_s"] = (r["phase2_step_s"] - ref) / n_mcmc if n_mcmc else None

    where = saved["machine"] if args.report else machine(args.device)
    print(f"\ntraining cost, batch {args.batch}, conv 8/16/32, {where}")
    print(f"{'model':32s} {'size':>5s} {'ph1 s/step':>10s} {'ph2 s/step':>10s} {'ph2/ELBO':>8s} "
          f"{'s/MCMC step':>11s} {'600+150 s':>10s} {'peak MiB':>9s}")
    for r in rows:
        per = f"{r['per_mcmc_step_s']:.3f}" if r["per_mcmc_step_s"] is not None else "-"
        print(f"{r['model']:32s} {r['size']:>4d}^3 {r['phase1_step_s']:10.3f} {r['phase2_step_s']:10.3f} "
              f"{r['phase2_over_elbo_step']:8.2f} {per:>11s} {r['default_budget_s']:10.0f} {r['peak_memory_mib']:9.0f}")
    out = write_result(f"cost_{args.device.split(':')[0]}", {"machine": where, "steps": args.steps, "rows": rows})
    _plot(rows, RESULTS / f"cost_{args.device.split(':')[0]}.png", where)
    print(f"wrote {out}")


def _plot(rows: list[dict], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        mine = {r["size"]: r for r in rows if r["model"] == name}
        xs = [j + i * width for j in range(len(sizes))]
        axes[0].bar(xs, [mine[s]["default_budget_s"] / 60 for s in sizes], width, label=name)
        axes[1].bar(xs, [mine[s]["peak_memory_mib"] for s in sizes], width, label=name)
    for ax, title in zip(axes, ("training time, 600 + 150 steps (min)", "peak memory (MiB)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [f"{s}^3" for s in sizes])
        ax.set_title(title)
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(where, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
