"""Held-out log-likelihood on scikit-learn's digits: plain VAE vs MCMC-refined VAEs.

Same architecture, epochs and data for every method; three seeds; importance sampling with
--particles particles from the encoder proposal (and from the MCMC proposal where a chain
exists). Binarised 8x8 digits, Bernoulli likelihood, 1400 train / 397 held out.

    python bench/likelihood.py [--seeds 0 1 2] [--pretrain 20] [--epochs 20] [--particles 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cohorts import digits_split
from bench.common import machine, parse_args, write_result
from models import (
    ModelConfig,
    SamplerConfig,
    TrainConfig,
    build_model,
    build_sampler,
    log_likelihood,
    train,
)

METHODS = {
    "plain VAE": ([8], SamplerConfig(kind="none")),
    "MALA fixed h": ([8], SamplerConfig(kind="mala", adaptation="fixed", step_size=0.1)),
    "MALA dual averaging": ([8], SamplerConfig(kind="mala", adaptation="dual_averaging")),
    "MALA entropy (diag)": ([8], SamplerConfig(kind="mala", adaptation="entropy")),
    "HMC entropy (diag, L=3)": ([8], SamplerConfig(kind="hmc", adaptation="entropy", n_leapfrog=3)),
    "2-layer HVAE, no MCMC": ([8, 4], SamplerConfig(kind="none")),
    "2-layer HVAE + MALA entropy (full)": ([8, 4], SamplerConfig(kind="mala", preconditioner="full")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-items", type=int, default=None, help="the first N training digits (default all 1400)")
    args = parse_args(parser, {"seeds": [0], "pretrain": 1, "epochs": 1, "particles": 8, "train_items": 128})
    train_x, test_x = digits_split()
    train_x = train_x[: args.train_items]
    test_x = test_x.to(args.device)
    rows = []
    for name, (latent_dims, sampler_cfg) in METHODS.items():
        encoder_ll, mcmc_ll, seconds = [], [], []
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = build_model(ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=latent_dims,
                                            likelihood="bernoulli", hidden=(128,)))
            sampler = build_sampler(sampler_cfg, model.latent_dim)
            started = time.perf_counter()
            train(model, sampler, train_x, TrainConfig(pretrain_epochs=args.pretrain, epochs=args.epochs,
                                                       batch_size=64, seed=seed, device=args.device))
            seconds.append(time.perf_counter() - started)
            gen = torch.Generator(device=args.device).manual_seed(1000 + seed)
            encoder_ll.append(float(log_likelihood(model, test_x, args.particles, generator=gen).mean()))
            if sampler_cfg.kind != "none":
                mcmc_ll.append(float(log_likelihood(model, test_x, args.particles, "mcmc", sampler, generator=gen).mean()))
        row = {
            "method": name,
            "log_px_encoder_mean": statistics.mean(encoder_ll),
            "log_px_encoder_sd": statistics.stdev(encoder_ll) if len(encoder_ll) > 1 else 0.0,
            "log_px_mcmc_mean": statistics.mean(mcmc_ll) if mcmc_ll else None,
            "train_seconds": statistics.mean(seconds),
            "per_seed": encoder_ll,
        }
        rows.append(row)
        print(f"{name:36s} {row['log_px_encoder_mean']:8.2f} ± {row['log_px_encoder_sd']:.2f}"
              + (f"   (MCMC proposal {row['log_px_mcmc_mean']:8.2f})" if mcmc_ll else "")
              + f"   train {row['train_seconds']:.1f} s", flush=True)
    where = machine(args.device)
    print(f"held-out log p(x) in nats per digit (higher is better); {len(args.seeds)} seeds, "
          f"{args.pretrain}+{args.epochs} epochs, {args.particles} particles; {where}")
    out = write_result(f"likelihood_digits_{torch.device(args.device).type}",
                       {"machine": where, "seeds": args.seeds, "pretrain_epochs": args.pretrain,
                        "epochs": args.epochs, "particles": args.particles, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
