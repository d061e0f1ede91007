"""Per-epoch trace of one hconv class model on the demo cohort's 4 AD scans (seed 0): ELBO,
acceptance, step size, log det C and beta, to see how phase 2 behaves for a given latent
layout, parameterisation, initial beta and number of MCMC transitions (docs/RESULTS.md,
"Hierarchical and class-conditional models"). Batch 4 = all scans, so one step per epoch.

    nice -n 15 python bench/hierarchy_trace.py --maps 2 4 --pretrain-epochs 100 --epochs 60 --beta 0.003
    nice -n 15 python bench/hierarchy_trace.py --maps 1 4 --pretrain-epochs 300 --epochs 20 --param centered
    nice -n 15 python bench/hierarchy_trace.py --maps 2 4 --pretrain-epochs 600 --epochs 0 --temperatures 1 0.7 0.4 0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.downstream import build_data
from bench.hierarchy import BASE, gradient_magnitude, high_frequency_fraction
from bench.posterior_quality import FeatureNet, kid
from models.augment import AugmentConfig
from models.config import ModelConfig
from models.data import PreprocessConfig
from models.factory import build_model
from models.report import memorisation_audit
from models.samplers import build_sampler
from models.training import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maps", type=int, nargs="*", default=[2, 4], help="latent_channels, finest first")
    ap.add_argument("--param", default="noncentered", choices=["noncentered", "centered"])
    ap.add_argument("--beta", type=float, default=1.0, help="sampler beta_init")
    ap.add_argument("--n-steps", type=int, default=5, help="MCMC transitions per step")
    ap.add_argument("--pretrain-epochs", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--temperatures", type=float, nargs="*", default=[],
                    help="after training: sample 30 scans with maps at these prior temperatures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="trace-") as tmp:
        data = build_data(0, Path(tmp), 40, 4, 20, PreprocessConfig())
    x = data["train_AD"]
    config = AugmentConfig()
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="hconv", latent_dims=[16], latent_channels=tuple(args.maps),
                                    parameterization=args.param, **BASE))
    sampler = build_sampler(config.sampler.model_copy(update={"beta_init": args.beta, "n_steps": args.n_steps}),
                            model.latent_dim)
    train_cfg = config.train.model_copy(update={"batch_size": len(x), "pretrain_epochs": args.pretrain_epochs,
                                                "epochs": args.epochs})
    print(f"hconv maps {args.maps} {args.param}: {model.latent_dim} chain coordinates; beta_init {args.beta}")

    def show(r):
        if r.phase == 2 or r.epoch % 50 == 0:
            extra = (f" accept {r.accept:.3f} h {r.step_size:.4f} log|C| {r.log_det_c:.1f} beta {r.beta:.4f}"
                     if r.phase == 2 else "")
            print(f"epoch {r.epoch} phase {r.phase} ELBO {r.elbo:.0f}{extra}", flush=True)

    Trainer(model, sampler, x, train_cfg).fit(callback=show)
    if args.temperatures:
        features, test = FeatureNet(3), data["test_AD"]
        f_test, g, h = features(test), gradient_magnitude(test), high_frequency_fraction(test)
        for t in args.temperatures:
            model.cfg = model.cfg.model_copy(update={"map_sampling": "prior", "map_temperature": t})
            scans = model.sample(30, torch.Generator().manual_seed(1)).clamp(0, 1)
            print(f"maps at temperature {t}: KIDx1e3 {1e3 * kid(f_test, features(scans)):.2f}  "
                  f"grad/real {gradient_magnitude(scans) / g:.3f}  HF/real {high_frequency_fraction(scans) / h:.3f}  "
                  f"flagged {len(memorisation_audit(x, scans)['flagged'])}")


if __name__ == "__main__":
    main()
