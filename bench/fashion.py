"""Held-out log p(x) on real Fashion-MNIST at the speed-measure paper's official settings.

The anchor is the paper's official TensorFlow code, run side by side (issue 12): its plain VAE
reaches -125.10 nats held out (test ELBO -131.07). Settings, identical for every variant: MLP
784-200-200 (encoder) / 10-200-200-784 (decoder), latent 10, ReLU, Glorot init, batch 100,
Adam 5e-4, 15 epochs, static binarisation at 0.5, Bernoulli likelihood, all 60 000 training
images; log p(x) by 1000-particle importance sampling (mcvae's encoder proposal) on the first
2000 test images. MCMC variants train 10 epochs of plain ELBO, then 5 with chains (--pretrain;
15 epochs in all, like the plain VAE), each spending the same 5 gradient evaluations per chain
and minibatch: MALA 5 steps, HMC 1 step of 5 leapfrogs.

    apt-get install dataset-fashion-mnist
    OMP_NUM_THREADS=1 python bench/fashion.py [--variants plain mala_entropy ...] [--seeds 0 1 2]

Prints one row per variant (mean and spread over seeds) and writes bench/results/fashion_<device>.json
(rows are merged with an existing file by variant and seed, so seeds can be run one at a time).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RESULTS, machine, parse_args, write_result
from models import (
    ModelConfig,
    SamplerConfig,
    TrainConfig,
    build_model,
    build_sampler,
    log_likelihood,
    train,
)

DATA = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_PLAIN = -125.10  # nats, the official TF code's plain VAE (issue 12)

VARIANTS = {
    "plain": SamplerConfig(kind="none"),
    "mala_fixed": SamplerConfig(kind="mala", adaptation="fixed", step_size=0.1, n_steps=5),
    "mala_dual_averaging": SamplerConfig(kind="mala", adaptation="dual_averaging", n_steps=5),
    "mala_entropy": SamplerConfig(kind="mala", adaptation="entropy", n_steps=5),
    "hmc_entropy": SamplerConfig(kind="hmc", adaptation="entropy", n_steps=1, n_leapfrog=5),
}


def load_split(name: str) -> torch.Tensor:
    """(N, 1, 28, 28) binary images: pixel / 255 > 0.5 (static binarisation)."""
    path = DATA / f"{name}-images-idx3-ubyte.gz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: apt-get install dataset-fashion-mnist")
    with gzip.open(path) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return torch.tensor(pixels / 255.0 > 0.5, dtype=torch.float32)


def model_config(args) -> ModelConfig:
    return ModelConfig(data_shape=(1, 28, 28), arch="mlp", latent_dims=[10], likelihood="bernoulli",
                       hidden=(200, 200), activation=args.activation, init=args.init)


def run_one(variant: str, seed: int, train_x, test_x, args) -> dict:
    torch.manual_seed(seed)  # network initialisation
    model = build_model(model_config(args))
    sampler = build_sampler(VARIANTS[variant], model.latent_dim)
    pretrain = args.epochs if variant == "plain" else args.pretrain
    cfg = TrainConfig(pretrain_epochs=pretrain, epochs=args.epochs - pretrain, batch_size=100, lr=5e-4,
                      seed=seed, threads=args.threads)
    started = time.perf_counter()
    history = train(model, sampler, train_x, cfg)
    train_seconds = time.perf_counter() - started
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        u, log_q = model.rsample(test_x, generator=gen)
        test_elbo = float((model.log_joint(test_x, u) - log_q).mean())
    started = time.perf_counter()
    log_px = log_likelihood(model, test_x, args.particles, generator=gen, chunk=50)
    eval_seconds = time.perf_counter() - started
    last = history.records[-1]
    row = {"variant": variant, "seed": seed, "log_px": float(log_px.mean()), "test_elbo": test_elbo,
           "train_elbo_last_epoch": last.elbo, "seconds_per_epoch": train_seconds / args.epochs,
           "eval_seconds": eval_seconds,
           "accept_last_epoch": last.accept, "step_size_last_epoch": last.step_size,
           "sampler": VARIANTS[variant].model_dump(), "pretrain_epochs": pretrain}
    print(json.dumps(row), flush=True)
    return row


def summarise(runs: list[dict], args) -> None:
    print(f"\nheld-out log p(x), nats (higher is better), first {args.test_items} test images, "
          f"{args.particles} particles; official TF plain VAE {OFFICIAL_PLAIN}; {machine()}")
    print(f"{'variant':22s} {'seeds':>5s} {'log p(x)':>17s} {'test ELBO':>9s} {'vs plain':>8s} {'s/epoch':>8s} {'accept':>6s}")
    plain = [r["log_px"] for r in runs if r["variant"] == "plain"]
    for variant in VARIANTS:
        rows = [r for r in runs if r["variant"] == variant]
        if not rows:
            continue
        lls = [r["log_px"] for r in rows]
        spread = statistics.stdev(lls) if len(lls) > 1 else 0.0
        gain = statistics.mean(lls) - statistics.mean(plain) if plain else float("nan")
        accepts = [r["accept_last_epoch"] for r in rows if r.get("accept_last_epoch") is not None]
        print(f"{variant:22s} {len(rows):5d} {statistics.mean(lls):9.2f} ± {spread:5.2f} "
              f"{statistics.mean(r['test_elbo'] for r in rows):9.2f} {gain:+8.2f} "
              f"{statistics.mean(r['seconds_per_epoch'] for r in rows):8.1f} "
              + (f"{statistics.mean(accepts):6.3f}" if accepts else "     -"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pretrain", type=int, default=10,
                        help="MCMC variants: plain-ELBO epochs before the chains start (of --epochs)")
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--test-items", type=int, default=2000)
    parser.add_argument("--train-items", type=int, default=None, help="the first N training images (default all)")
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--init", default="xavier")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the result file (for side experiments)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="TAG",
                        help="no training: merge the runs of earlier --tag result files into this one")
    args = parse_args(parser, {"variants": ["plain", "mala_entropy"], "seeds": [0], "epochs": 2, "pretrain": 1,
                               "particles": 8, "test_items": 100, "train_items": 500})
    if args.merge:
        runs = []
        for tag in args.merge:
            for row in json.loads((RESULTS / f"fashion_cpu{tag}.json").read_text())["runs"]:
                runs = [r for r in runs if (r["variant"], r["seed"]) != (row["variant"], row["seed"])] + [row]
        write_result(f"fashion_cpu{args.tag}", {"machine": machine(), "merged_from": args.merge, "runs": runs})
        summarise(runs, args)
        return
    train_x, test_x = load_split("train")[: args.train_items], load_split("t10k")[: args.test_items]
    out_name = f"fashion_cpu{args.tag}"
    previous = RESULTS / f"{out_name}.json"
    runs = json.loads(previous.read_text())["runs"] if previous.exists() else []
    for variant in args.variants:
        for seed in args.seeds:
            row = run_one(variant, seed, train_x, test_x, args)
            runs = [r for r in runs if (r["variant"], r["seed"]) != (variant, seed)] + [row]
            write_result(out_name, {"machine": machine(), "settings": vars(args), "runs": runs})
    summarise(runs, args)
    print(f"wrote {RESULTS / (out_name + '.json')}")


if __name__ == "__main__":
    main()
