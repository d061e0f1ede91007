"""Why do shared class-conditional models lose the AD shift on the hard cohort, and what fixes it?
(issue 12, follow-up of bench/cohort_utility.py)

Class fidelity is scored directly: a *reference* classifier (models/classifier.py's CNN, 400 steps)
is trained on a large real cohort of the same difficulty that no generator sees (100 CN + 100 AD,
demo seed 500 + s) and gives each synthetic AD scan a probability of AD. Real held-out AD and CN
scans give the scale (their mean P(AD) and the reference's AUROC). Per variant, over 30 synthetic
AD scans from the training cohort of bench/cohort_utility.py (60 CN + 6 AD, seed s): mean P(AD),
AUROC of synthetic AD against the held-out real CN, KID and sharpness against held-out real AD,
train seconds, and the downstream classifier's AUROC with the 30 scans added (5x).

    nice -n 5 python bench/shared_fidelity.py --variants "shared conv" "shared conv x4"
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohort_utility import CONV, DIFFICULTY, HCONV
from bench.cohorts import build_data, duplicate_copies, held_out, labelled
from bench.common import RESULTS, budget, machine, parse_args, write_result
from bench.metrics import FeatureNet, gradient_magnitude, high_frequency_fraction, kid, score
from bench.plots import plot_montage
from models.augment import AugmentConfig
from models.classifier import predict, train_classifier
from models.conditional import ClassView
from models.config import ModelConfig, SamplerConfig
from models.data import PreprocessConfig, load_tensors, make_demo_cohort
from models.factory import build_model
from models.fitting import fit_class_model, fit_transfer_model
from models.generators import draw_synthetic
from models.shared_model import class_view, fit_shared_model, stack_classes


def variant_settings(name: str, quick: bool = False) -> tuple[dict, AugmentConfig, str]:
    """'<scope> <arch> [xK] [zN] [mcmc] [nc] [mC,C..]': e.g. 'shared conv x4 z64 mcmc';
    'nc': noncentered; 'm2,4': hconv latent maps of 2 and 4 channels (finest first)."""
    words = name.split()
    scope, arch = words[0], words[1]
    choice = (CONV if arch == "conv" else HCONV).model_dump()
    scale = 1.0
    config = AugmentConfig(sampler=SamplerConfig(kind="none"))
    for w in words[2:]:
        if w.startswith("x"):
            scale = float(w[1:])
        elif w.startswith("z"):
            choice["latent_dims"] = [int(w[1:])]
        elif w == "mcmc":
            config = AugmentConfig()
        elif w == "nc":
            choice["parameterization"] = "noncentered"
        elif w.startswith("m"):
            choice["latent_channels"] = tuple(int(c) for c in w[1:].split(","))
    config = config.model_copy(update={"pretrain_steps": round(600 * scale), "mcmc_steps": round(150 * scale)})
    return choice, budget(config, quick), scope


def p_ad(net, x: torch.Tensor) -> torch.Tensor:
    return predict(net, x)[:, 1]


# The run's sizes: training cohort (CN, AD), held-out scans per class, reference cohort per class,
# the reference classifier's steps, synthetic scans per source, the downstream classifier's steps.
SIZES = {"n_control": 60, "n_ad": 6, "n_test": 20, "n_reference": 100, "reference_steps": 400, "n_drawn": 30,
         "clf_steps": 100}
QUICK_SIZES = {"n_control": 4, "n_ad": 2, "n_test": 2, "n_reference": 4, "reference_steps": 2, "n_drawn": 4,
               "clf_steps": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=["shared conv", "shared conv x4"])
    ap.add_argument("--difficulty", type=float, default=DIFFICULTY)
    ap.add_argument("--spreads", type=float, nargs="+", default=None,
                    help="also draw with the aggregate-posterior Gaussian's spread scaled by each")
    ap.add_argument("--tag", default="")
    ap.add_argument("--temperatures", type=float, nargs="+", default=None,
                    help="hconv variants: draw the 30 scans at each of these map temperatures "
                         "(one trained model; rows '<variant> tT')")
    ap.add_argument("--joint", action="store_true",
                    help="hconv variants: also draw from the joint aggregate-posterior Gaussian (row '<variant> joint')")
    ap.add_argument("--montage", action="store_true", help="write a montage of every source")
    args = parse_args(ap, {"variants": ["shared conv", "shared hconv mcmc"]})
    size = QUICK_SIZES if args.quick else SIZES
    torch.set_num_threads(1)
    pre, seed = PreprocessConfig(), args.seed
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        data = build_data(seed, Path(tmp) / "d", size["n_control"], size["n_ad"], size["n_test"], pre,
                          difficulty=args.difficulty)
        cohort = make_demo_cohort(Path(tmp) / "ref", n_control=size["n_reference"], n_ad=size["n_reference"],
                                  shape=(32, 32, 32), seed=500 + seed,
                                  difficulty=args.difficulty)
        ref = {c: load_tensors(cohort, pre, Path(tmp) / "cache", c) for c in ("CN", "AD")}
    x_ref, y_ref = labelled(ref["CN"], ref["AD"])
    t0 = time.perf_counter()
    reference = train_classifier(x_ref, y_ref, 7, size["reference_steps"], 16, 3e-3, "weighted")
    x_test, y_test = held_out(data)
    ref_score = score(reference, x_test, y_test)
    rows = {"reference": {**ref_score, "train_seconds": round(time.perf_counter() - t0, 1),
                          "p_ad_real_AD_test": float(p_ad(reference, data["test_AD"]).mean()),
                          "p_ad_real_CN_test": float(p_ad(reference, data["test_CN"]).mean()),
                          "p_ad_real_AD_train": float(p_ad(reference, data["train_AD"]).mean())}}
    print(json.dumps(rows["reference"]), flush=True)
    features = FeatureNet(spatial_dims=3)
    f_test, real_grad, real_hf = features(data["test_AD"]), gradient_magnitude(data["test_AD"]), \
        high_frequency_fraction(data["test_AD"])
    x_cn, x_ad = data["train_CN"], data["train_AD"]
    sources = {"duplicates": duplicate_copies(x_ad, size["n_drawn"], seed)}
    for name in args.variants:
        choice, config, scope = variant_settings(name, args.quick)
        model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **choice)
        started = time.perf_counter()
        if scope == "per-class":
            model, _, history, _ = fit_class_model(x_ad, model_cfg, config, seed * 1009)
        elif scope == "transfer":
            model, _, history, _ = fit_transfer_model(torch.cat([x_cn, x_ad]), x_ad, model_cfg, config,
                                                      seed * 1009)
        else:
            shared = fit_shared_model({"CN": x_cn, "AD": x_ad}, model_cfg, config, seed * 1009)
            model, history = class_view(shared, "AD"), shared.history
        seconds = time.perf_counter() - started
        inner = getattr(model, "model", model)
        temperatures = args.temperatures if args.temperatures and inner.cfg.arch == "hconv" else [None]
        fitted_spread = (inner.sampling_scale_tril.clone(), inner.sampling_diag_scale.clone())
        for t in temperatures:
            if t is not None:
                inner.cfg = inner.cfg.model_copy(update={"map_temperature": t})
            for spread in args.spreads or [None]:
                row = name if t is None else f"{name} t{t:g}"
                if spread is not None:
                    # the aggregate-posterior Gaussian's spread around its mean, scaled
                    inner.sampling_scale_tril.copy_(spread * fitted_spread[0])
                    inner.sampling_diag_scale.copy_(spread * fitted_spread[1])
                    row = f"{row} spread {spread:g}"
                scans, near = draw_synthetic(model, size["n_drawn"], x_ad, seed * 1009 + 1, config.near_copies)
                sources[row] = scans
                rows[row] = {"train_seconds": round(seconds, 1), "redrawn": near["replaced"],
                             "final_accept": history.final_accept()}
        if args.joint and inner.cfg.arch == "hconv":
            # the same trained weights, every layer drawn from the joint aggregate-posterior Gaussian
            joint = build_model(inner.cfg.model_copy(update={"map_sampling": "joint"}))
            joint.load_state_dict(inner.state_dict(), strict=False)
            joint.eval()
            if scope in ("per-class", "transfer"):  # a model of the AD scans alone
                joint.fit_sampling_distribution(x_ad)
                view = joint
            else:
                both, labels, _ = stack_classes({"CN": x_cn, "AD": x_ad})
                joint.fit_sampling_distribution([(both, labels)])
                view = ClassView(joint, shared.index("AD"))
            scans, near = draw_synthetic(view, size["n_drawn"], x_ad, seed * 1009 + 1, config.near_copies)
            sources[f"{name} joint"] = scans
            rows[f"{name} joint"] = {"train_seconds": round(seconds, 1), "redrawn": near["replaced"],
                                     "final_accept": history.final_accept()}
    for name, scans in sources.items():
        p = p_ad(reference, scans)
        auroc = score(reference, *labelled(data["test_CN"], scans))["auroc"]
        x, y = labelled(x_cn, torch.cat([x_ad, scans]))
        downstream = score(train_classifier(x, y, seed, size["clf_steps"], 16, 3e-3, "weighted"), x_test, y_test)
        rows.setdefault(name, {}).update({
            "p_ad_mean": float(p.mean()), "auroc_vs_real_CN": auroc, "kid_x1e3": 1e3 * kid(f_test, features(scans)),
            "grad_ratio": gradient_magnitude(scans) / real_grad, "hf_ratio": high_frequency_fraction(scans) / real_hf,
            "downstream_5x_auroc": downstream["auroc"], "downstream_5x_balanced_accuracy": downstream["balanced_accuracy"]})
        print(name, json.dumps(rows[name]), flush=True)
    print(f"{machine()}, seed {seed}, difficulty {args.difficulty}")
    print("| source | P(AD) by reference | AUROC vs real CN | KID x 1e3 | HF / real | downstream 5x AUROC | train s |")
    print("|---|---|---|---|---|---|---|")
    r = rows["reference"]
    print(f"| real held-out AD / CN | {r['p_ad_real_AD_test']:.3f} / {r['p_ad_real_CN_test']:.3f} | "
          f"{r['auroc']:.3f} | | | | {r['train_seconds']} |")
    for name in sources:
        r = rows[name]
        print(f"| {name} | {r['p_ad_mean']:.3f} | {r['auroc_vs_real_CN']:.3f} | {r['kid_x1e3']:.1f} | "
              f"{r['hf_ratio']:.3f} | {r['downstream_5x_auroc']:.3f} | {r.get('train_seconds', '')} |")
    write_result(f"shared_fidelity{args.tag}", {"machine": machine(), "args": vars(args), "rows": rows})
    if args.montage:
        shown = [("real AD (held out)", data["test_AD"])] + list(sources.items())
        plot_montage(shown, RESULTS / f"shared_fidelity_montage{args.tag}.png", seed)


if __name__ == "__main__":
    main()
