"""Entropy adaptation in the product's own runs: acceptance and beta per epoch of the default
`mcvae demo` model (3-D, 32^3), on several seeds, against the acceptance target.

Each seed builds the demo cohort as `mcvae demo --seed S` does (40 CN, 4 AD), preprocesses it with
the demo's defaults and trains the model that draws the AD scans with the default AugmentConfig
(``model_scope`` shared: one class-conditional model on every scan, ``fit_shared_model``; per_class
and transfer: the AD model through ``fit_class_model``), the code path of `mcvae demo` / augment. Prints per seed the final
acceptance (mean of the last 10 % of phase 2, and the last epoch), the minimum over phase 2 after
its first 10 epochs, and writes bench/results/adaptation_demo.json and
docs/figures/adaptation_demo.png (acceptance and beta per epoch, target line).

    OMP_NUM_THREADS=1 python bench/adaptation.py [--seeds 0 1 2] [--model-scope transfer] [--sampler JSON]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RESULTS, budget, machine, parse_args, write_result
from models.augment import AugmentConfig
from models.config import ModelConfig
from models.data import PreprocessConfig, load_tensors, make_demo_cohort
from models.fitting import fit_class_model, fit_transfer_model
from models.shared_model import fit_shared_model

FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "adaptation_demo.png"


def run_seed(seed: int, config: AugmentConfig, work: Path, n_control: int = 40, n_ad: int = 4) -> dict:
    cohort = make_demo_cohort(work / f"cohort{seed}", n_control=n_control, n_ad=n_ad, shape=(32, 32, 32), seed=seed)
    pre = config.preprocess or PreprocessConfig(spatial_dims=cohort.spatial_dims)
    x = load_tensors(cohort, pre, work / f"cache{seed}", "AD")
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
    config = config.model_copy(update={"seed": seed})
    started = time.perf_counter()
    # The demo's first (and only) minority class: seed = config.seed * 1009 + 0, as in augment.
    if config.model_scope == "shared":  # one model on every class, as augment trains it
        scans = {"CN": load_tensors(cohort, pre, work / f"cache{seed}", "CN"), "AD": x}
        shared = fit_shared_model(scans, model_cfg, config, seed * 1009)
        sampler, history = shared.sampler, shared.history
    elif config.model_scope == "transfer":  # the base model learns every class's scans first
        every = load_tensors(cohort, pre, work / f"cache{seed}")
        _, sampler, history, _ = fit_transfer_model(every, x, model_cfg, config, seed * 1009)
    else:
        _, sampler, history, _ = fit_class_model(x, model_cfg, config, seed * 1009)
    seconds = time.perf_counter() - started
    phase2 = [r for r in history.records if r.phase == 2]
    accepts = [r.accept for r in phase2]
    tail = accepts[-max(1, len(accepts) // 10):]
    return {
        "seed": seed,
        "target": sampler.cfg.accept_target,
        "final_accept_tail_mean": statistics.mean(tail),
        "final_accept_last_epoch": accepts[-1],
        "min_accept_after_10": min(accepts[10:]) if len(accepts) > 10 else min(accepts),
        "max_accept_after_10": max(accepts[10:]) if len(accepts) > 10 else max(accepts),
        "train_seconds": seconds,
        "epochs": [r.epoch for r in phase2],
        "accept": accepts,
        "beta": [r.beta for r in phase2],
        "step_size": [r.step_size for r in phase2],
        "log_det_c": [r.log_det_c for r in phase2],
    }


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in runs:
        ax_a.plot(run["epochs"], run["accept"], lw=1, label=f"seed {run['seed']}")
        ax_b.semilogy(run["epochs"], run["beta"], lw=1, label=f"seed {run['seed']}")
    target = runs[0]["target"]
    ax_a.axhline(target, color="k", ls="--", lw=1, label=f"target {target}")
    ax_a.axhspan(target - 0.05, target + 0.05, color="k", alpha=0.08)
    ax_a.set(xlabel="epoch (phase 2)", ylabel="mean acceptance", ylim=(0, 1))
    ax_b.set(xlabel="epoch (phase 2)", ylabel="beta (entropy weight)")
    ax_a.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mcmc-steps", type=int, default=None, help="override the default budget")
    parser.add_argument("--sampler", default="{}", help="JSON overrides of the SamplerConfig")
    scopes = AugmentConfig.model_fields["model_scope"]
    parser.add_argument("--model-scope", choices=get_args(scopes.annotation), default=scopes.default,
                        help="shared (the default): one class-conditional model on every scan; per_class: "
                             "the AD model alone; transfer: the AD model from a base model on every scan")
    parser.add_argument("--model", default="{}", help="JSON overrides of the ModelChoice")
    parser.add_argument("--tag", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--merge", nargs="+", default=None, metavar="TAG",
                        help="no training: summarise and plot the runs of earlier --tag results")
    args = parse_args(parser, {"seeds": [0]})
    import json

    torch.set_num_threads(args.threads)
    config = AugmentConfig()
    overrides = json.loads(args.sampler)
    if overrides:
        config = config.model_copy(update={"sampler": config.sampler.model_copy(update=overrides)})
    config = config.model_copy(update={"model_scope": args.model_scope,
                                       "model": config.model.model_copy(update=json.loads(args.model))})
    config = budget(config, args.quick)
    if args.mcmc_steps is not None:
        config = config.model_copy(update={"mcmc_steps": args.mcmc_steps})
    runs = []
    if args.merge:  # seeds run as separate processes, one --tag each
        for tag in args.merge:
            runs += json.loads((RESULTS / f"adaptation_demo{tag}.json").read_text())["runs"]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [] if args.merge else args.seeds:
            runs.append(run_seed(seed, config, Path(tmp), *((4, 2) if args.quick else ())))
    for run in runs:
        print(f"seed {run['seed']}: final acceptance {run['final_accept_tail_mean']:.3f} (last 10%), "
                  f"{run['final_accept_last_epoch']:.3f} (last epoch); phase 2 after epoch 10: "
              f"min {run['min_accept_after_10']:.3f} max {run['max_accept_after_10']:.3f}; "
              f"beta {run['beta'][-1]:.3g}; h {run['step_size'][-1]:.3g}; train {run['train_seconds']:.0f} s",
              flush=True)
    where = machine()
    target = runs[0]["target"]
    ok = all(abs(r["final_accept_tail_mean"] - target) <= 0.05 for r in runs)
    print(f"target {target}; every final acceptance within 0.05: {ok}; {where}")
    name = f"adaptation_demo{args.tag}"
    out = write_result(name, {"machine": where, "sampler": config.sampler.model_dump(),
                              "model_scope": config.model_scope,
                              "model": config.model.model_dump(), "pretrain_steps": config.pretrain_steps, "mcmc_steps": config.mcmc_steps,
                              "runs": runs})
    figure = (RESULTS if args.quick else FIGURE.parent) / f"{name}.png"  # quick: not over the docs' figure
    plot(runs, figure, f"demo model drawing AD (32^3, {config.model_scope}, {config.model.arch}), {config.sampler.kind} {config.sampler.adaptation}; {where}")
    print(f"wrote {out} and {figure}")


if __name__ == "__main__":
    main()
