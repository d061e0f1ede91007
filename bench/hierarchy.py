"""Issue 12, item 4: are scans of the hierarchical model (spatial latent maps) sharper than
today's default, and as close to real ones (KID)? Also item 3's shared class-conditional model.

Per seed: the demo cohort as `mcvae demo` makes it (40 CN + 4 AD, 32^3, default preprocessing)
for training and a held-out 20 CN + 20 AD cohort (seed 1000 + s) that no generator sees.
Generators, each with the augment budget (600 plain-ELBO + 150 MALA-refined steps, batch 8,
lr 2e-3, entropy-adapted MALA x5, diag C) and aggregate-posterior sampling:

  conv per-class     today's default: one model per class on its 4 AD scans, latent [16]
  hconv per-class    the hierarchy: vector 16 on top of a latent map of 4 channels at 4^3
                     (272 chain coordinates, moved jointly); maps drawn from their prior
  hconv shared       one class-conditional hconv on all 44 training scans, AD drawn by label
  conv shared        one class-conditional conv, the same way

Figures per generator, over 30 synthetic AD scans:
- sharpness: mean gradient magnitude (central differences, per voxel) and the fraction of
  spectral energy above half the Nyquist frequency, each as a ratio to the held-out real AD
  scans' value (1.0 = as sharp as real scans; smooth decoder means sit below 1);
- KID against the 20 held-out real AD scans (random-feature KID of bench/metrics.py),
  with the floor of the 4 real training AD scans against the same 20;
- memorisation audit (flagged near-copies of a training AD scan), train seconds.

    nice -n 15 python bench/hierarchy.py --seeds 0          # ~20 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohorts import build_data
from bench.common import RESULTS, budget, machine, parse_args, write_result
from bench.metrics import FeatureNet, gradient_magnitude, high_frequency_fraction, kid, mean_sd
from bench.plots import plot_montage
from models.augment import AugmentConfig
from models.config import ModelConfig
from models.data import PreprocessConfig
from models.fitting import fit_class_model
from models.report import memorisation_audit
from models.shared_model import fit_shared_model, sample_class

SHAPE = (1, 32, 32, 32)
BASE = {"data_shape": SHAPE, "channels": (8, 16, 32), "hidden": (256,), "obs_log_var": -4.0}
MODELS = {
    "conv": ModelConfig(arch="conv", latent_dims=[16], **BASE),
    # one map (4 channels at 4^3): 272 chain coordinates. Two maps (2 x 8^3 + 4 x 4^3, 1296
    # coordinates) were tried first: entropy-adapted MALA's acceptance fell to 0 within ~10 MCMC
    # steps and training diverged (docs/RESULTS.md, "Hierarchical and class-conditional models").
    "hconv": ModelConfig(arch="hconv", latent_dims=[16], latent_channels=(4,), **BASE),
    # two maps in the centered parameterisation, which trained stably where noncentered diverged
    "hconv2c": ModelConfig(arch="hconv", latent_dims=[16], latent_channels=(2, 4), parameterization="centered", **BASE),
    "hconv1c": ModelConfig(arch="hconv", latent_dims=[16], latent_channels=(4,), parameterization="centered", **BASE),
}
VARIANTS = ["conv per-class", "hconv per-class", "hconv shared", "conv shared"]


def generate(variant: str, data: dict, config: AugmentConfig, seed: int, n: int) -> tuple[torch.Tensor, float]:
    arch, scope = variant.split()
    started = time.perf_counter()
    if scope == "per-class":
        model, _, _, _ = fit_class_model(data["train_AD"], MODELS[arch], config, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        scans = model.sample(n, generator=gen)
    else:
        shared = fit_shared_model({"AD": data["train_AD"], "CN": data["train_CN"]}, MODELS[arch], config, seed)
        scans = sample_class(shared, "AD", n, seed=seed + 1)
    return scans.float().clamp(0, 1), time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=VARIANTS)
    ap.add_argument("--steps-scale", type=float, default=1.0, help="scale the 600 + 150 step budget")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--difficulty", type=float, default=0.0, help="make_demo_cohort's difficulty (0 easy, 1 hard)")
    ap.add_argument("--n-control", type=int, default=40)
    ap.add_argument("--n-ad", type=int, default=4)
    ap.add_argument("--tag", default="")
    args = parse_args(ap, {"n_control": 4, "n_ad": 2, "variants": ["conv per-class", "hconv shared"]})
    torch.set_num_threads(args.threads)
    pre = PreprocessConfig()
    defaults = AugmentConfig()
    config = budget(defaults.model_copy(update={"pretrain_steps": round(600 * args.steps_scale),
                                                "mcmc_steps": round(150 * args.steps_scale)}), args.quick)
    n_syn, n_test = (4, 2) if args.quick else (30, 20)
    features = FeatureNet(spatial_dims=3)
    rows, montage = [], None
    started = time.perf_counter()
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="hier-") as tmp:
            data = build_data(seed, Path(tmp), args.n_control, args.n_ad, n_test, pre, difficulty=args.difficulty)
        test_ad = data["test_AD"]
        f_test = features(test_ad)
        real_grad, real_hf = gradient_magnitude(test_ad), high_frequency_fraction(test_ad)
        floor = kid(f_test, features(data["train_AD"]))
        rows.append({"seed": seed, "variant": "real AD (training)", "kid": floor,
                     "grad_ratio": gradient_magnitude(data["train_AD"]) / real_grad,
                     "hf_ratio": high_frequency_fraction(data["train_AD"]) / real_hf})
        shown = [("real AD (held out)", test_ad)]
        for variant in args.variants:
            scans, seconds = generate(variant, data, config, seed * 1009, n_syn)
            audit = memorisation_audit(data["train_AD"], scans)
            row = {"seed": seed, "variant": variant, "train_seconds": seconds, "kid": kid(f_test, features(scans)),
                   "grad_ratio": gradient_magnitude(scans) / real_grad,
                   "hf_ratio": high_frequency_fraction(scans) / real_hf, "flagged": len(audit["flagged"])}
            rows.append(row)
            shown.append((variant, scans))
            print(f"seed {seed} {variant:16s} {seconds:6.0f} s  KIDx1e3 {1e3 * row['kid']:7.2f} "
                  f"(floor {1e3 * floor:.2f})  grad/real {row['grad_ratio']:.3f}  HF/real {row['hf_ratio']:.3f}  "
                  f"flagged {row['flagged']}", flush=True)
        montage = montage or shown
    mach = machine()
    print(f"\n{mach}; seeds {args.seeds}; {(time.perf_counter() - started) / 60:.1f} min")
    print("| generator | train s | KID x 1e3 | gradient / real | HF energy / real | flagged copies |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for variant in ["real AD (training)", *args.variants]:
        mine = [r for r in rows if r["variant"] == variant]
        s = {k: mean_sd([r[k] for r in mine]) for k in ("kid", "grad_ratio", "hf_ratio")}
        s["kid"] = {k: 1e3 * v for k, v in s["kid"].items()}
        extra = {k: mean_sd([r[k] for r in mine]) for k in ("train_seconds", "flagged") if k in mine[0]}
        summary[variant] = {**s, **extra}
        fmt = lambda d, f: f"{f.format(d['mean'])} ± {f.format(d['sd'])}" if d else ""
        print(f"| {variant} | {fmt(extra.get('train_seconds'), '{:.0f}')} | {fmt(s['kid'], '{:.2f}')} | "
              f"{fmt(s['grad_ratio'], '{:.3f}')} | {fmt(s['hf_ratio'], '{:.3f}')} | {fmt(extra.get('flagged'), '{:.1f}')} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot_montage(montage, RESULTS / f"hierarchy_montage{args.tag}.png", args.seeds[0])
    out = write_result(f"hierarchy{args.tag}", {"machine": mach, "seeds": args.seeds, "steps_scale": args.steps_scale,
                                                "difficulty": args.difficulty, "rows": rows, "summary": summary})
    print(f"wrote {out} and hierarchy_montage{args.tag}.png")


if __name__ == "__main__":
    main()
