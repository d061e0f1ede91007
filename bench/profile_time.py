"""Time per class model of a resolution profile (models/profiles.py), from a few steps on random
volumes of the profile's grid: plain-ELBO steps alone, then plain + MCMC steps (which include
entropy adaptation's 30-transition warm start); extrapolated to the profile's step budget.

    nice -n 15 python bench/profile_time.py --profile standard
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from models.augment import AugmentConfig, fit_class_model
from models.config import ModelConfig
from models.data import PreprocessConfig
from models.profiles import PROFILE_NAMES, profile_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="standard", choices=PROFILE_NAMES)
    ap.add_argument("--plain", type=int, default=8, help="plain steps timed")
    ap.add_argument("--mcmc", type=int, default=4, help="MCMC steps timed (after --plain plain ones)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = profile_settings(args.profile, {"train": {"device": "cpu", "amp": False}})
    pre = PreprocessConfig(**settings["preprocess"])
    x = torch.rand(8, 1, *pre.target_shape, generator=torch.Generator().manual_seed(0))
    seconds = {}
    for plain, mcmc in ((args.plain, 0), (args.plain, args.mcmc)):
        config = AugmentConfig(**{**settings, "pretrain_steps": plain, "mcmc_steps": mcmc})
        model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
        started = time.perf_counter()
        fit_class_model(x, model_cfg, config, seed=0)
        seconds[mcmc] = time.perf_counter() - started
        print(f"{plain} plain + {mcmc} MCMC steps: {seconds[mcmc]:.1f} s", flush=True)
    sampler = AugmentConfig(**settings).sampler
    plain_step = seconds[0] / args.plain
    transition = (seconds[args.mcmc] - seconds[0]) / (sampler.warmup_steps + args.mcmc * sampler.n_steps)
    budget = settings["pretrain_steps"] * plain_step + settings["mcmc_steps"] * sampler.n_steps * transition
    print(f"profile {args.profile} {pre.target_shape}: {plain_step:.2f} s per plain step, {transition:.2f} s per "
          f"MCMC transition -> about {budget / 60:.0f} min per class model at {settings['pretrain_steps']} + "
          f"{settings['mcmc_steps']} x {sampler.n_steps} steps; {machine()}")


if __name__ == "__main__":
    main()
