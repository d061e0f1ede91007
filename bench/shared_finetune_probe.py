"""Probe (issue 12): does a shared class-conditional conv VAE reconstruct and sample the minority
class, and does fine-tuning it on the minority scans alone recover the class's shift?

Scored by the reference classifier of bench/shared_fidelity.py (trained on 200 unseen real scans
of the same difficulty): mean P(AD) of reconstructions of the 6 training AD scans (with their
label and with the CN label), of aggregate-posterior and prior samples, then of reconstructions
and delivered samples (near-copies redrawn) after ``--finetune`` plain-ELBO steps on the AD
scans only.

    nice -n 5 python bench/shared_finetune_probe.py --steps 600 --finetune 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohort_utility import CONV, DIFFICULTY
from bench.common import machine
from bench.downstream import build_data, train_classifier
from bench.shared_fidelity import p_ad
from models.augment import AugmentConfig
from models.config import ModelConfig, SamplerConfig
from models.data import PreprocessConfig, load_tensors, make_demo_cohort
from models.generators import draw_synthetic
from models.samplers import build_sampler
from models.shared_model import class_view, fit_shared_model
from models.training import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="plain-ELBO steps of the shared model")
    ap.add_argument("--finetune", type=int, default=300, help="then plain-ELBO steps on the AD scans only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pre = PreprocessConfig()
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        tmp = Path(tmp)
        data = build_data(args.seed, tmp / "d", 60, 6, 20, pre, difficulty=DIFFICULTY)
        cohort = make_demo_cohort(tmp / "ref", n_control=100, n_ad=100, shape=(32, 32, 32), seed=500 + args.seed,
                                  difficulty=DIFFICULTY)
        ref = {c: load_tensors(cohort, pre, tmp / "cache", c) for c in ("CN", "AD")}
    reference = train_classifier(torch.cat([ref["CN"], ref["AD"]]),
                                 torch.cat([torch.zeros(100), torch.ones(100)]).long(), 7, 400, 16, 3e-3)
    score = lambda x: float(p_ad(reference, x).mean())
    x_ad, x_cn = data["train_AD"], data["train_CN"]
    config = AugmentConfig(sampler=SamplerConfig(kind="none"), pretrain_steps=args.steps, mcmc_steps=0)
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **CONV.model_dump())
    shared = fit_shared_model({"CN": x_cn, "AD": x_ad}, model_cfg, config, args.seed)
    model, ad, cn = shared.model.eval(), shared.index("AD"), shared.index("CN")
    as_ad, as_cn = torch.full((len(x_ad),), ad), torch.full((len(x_ad),), cn)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        mu, _ = model.encode(x_ad, y=as_ad)
        print(f"{machine()}, seed {args.seed}, difficulty {DIFFICULTY}, shared model {args.steps} steps")
        print(f"P(AD): real training AD {score(x_ad):.3f}, real training CN {score(x_cn):.3f}")
        print(f"P(AD): reconstructions of the AD scans {score(model.decode(mu, y=as_ad)):.3f} "
              f"(decoded with the CN label {score(model.decode(mu, y=as_cn)):.3f})")
        print(f"P(AD): aggregate samples of AD {score(model.sample(30, gen, y=ad)):.3f}, of CN "
              f"{score(model.sample(30, gen, y=cn)):.3f}; prior samples of AD "
              f"{score(model.decode(model.sample_prior(30, gen, y=ad), y=ad)):.3f}")
    if args.finetune:
        tune = AugmentConfig().train_config(len(x_ad), 5).model_copy(
            update={"pretrain_epochs": args.finetune, "epochs": 0})
        Trainer(model, build_sampler(SamplerConfig(kind="none"), model.latent_dim), x_ad, tune, labels=as_ad).fit()
        model.eval()
        with torch.no_grad():
            mu, _ = model.encode(x_ad, y=as_ad)
            scans, near = draw_synthetic(class_view(shared, "AD"), 30, x_ad, 11)
            print(f"after {args.finetune} steps on the AD scans: reconstructions {score(model.decode(mu, y=as_ad)):.3f}, "
                  f"delivered samples {score(scans):.3f} ({near['replaced']} near-copies redrawn, "
                  f"{near['left_out']} left out); CN samples {score(model.sample(30, gen, y=cn)):.3f}")


if __name__ == "__main__":
    main()
