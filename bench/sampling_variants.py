"""Issue 12, session 7: is the few-scan *sampling distribution* what keeps the generators below
duplicates on the hard cohort?

Per seed, the per-class and transfer conv AD models of bench/cohort_utility.py are trained once;
new AD scans are then drawn from each in several ways, every way through the same near-copy
redraw rule that `mcvae augment` applies (models.augment.draw_synthetic), and scored by the same
downstream classifier at 1x / 2x / 5x, with KID and sharpness against the held-out real AD scans:

  gaussian        what augment delivers today: decoder means at latents from the Gaussian
                  moment-matched to the aggregate posterior (1/N) sum_i q(z | x_i)
  mixture         the aggregate posterior itself: a training scan i at random, z ~ q(z | x_i)
  mixture+detail  as mixture, plus scan i's own residual x_i - decode(mu_i): the scan moved along
                  the decoder's manifold by its posterior spread, keeping its real fine detail
  gaussian+detail a gaussian draw plus the residual of the training scan whose posterior mean is
                  nearest the draw (in the posterior's own metric)
  between         a point on the segment between two training scans' posterior means,
                  (1 - t) mu_i + t mu_j, t ~ U(0, 1): new subjects inside the scans' hull
  between+detail  as between, plus the residual of the nearer of the two scans
  fine_detail     what augment delivers with AugmentConfig.fine_detail "nearest" (the default
                  since session 7, models/fine_detail.py): gaussian draws plus the residual of
                  the training scan whose reconstruction is nearest the draw in scan space
  fine_detail_hp1 as fine_detail, with only the residual's part finer than a Gaussian of 1 voxel

    nice -n 15 python bench/sampling_variants.py --seeds 0 1 --tag _a
    nice -n 15 python bench/sampling_variants.py --seeds 2 3 4 --tag _b
    python bench/sampling_variants.py --merge _a _b
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

from bench.cohort_utility import CONV, add_cohort_arguments
from bench.cohorts import build_data, duplicate_copies, held_out, labelled
from bench.common import RESULTS, budget, machine, parse_args, write_result
from bench.metrics import (
    METRICS,
    FeatureNet,
    gradient_magnitude,
    high_frequency_fraction,
    kid,
    mean_sd,
    score,
)
from bench.plots import plot_montage
from models.augment import AugmentConfig
from models.classifier import train_classifier
from models.config import ModelConfig
from models.data import PreprocessConfig
from models.fine_detail import FineDetail
from models.fitting import fit_class_model, fit_transfer_model
from models.generators import draw_synthetic

VARIANTS = ["gaussian", "mixture", "mixture+detail", "gaussian+detail", "between", "between+detail", "fine_detail",
            "fine_detail_hp1"]
SCOPES = ["per-class", "transfer"]


class Drawer(torch.nn.Module):
    """What draw_synthetic needs of a model (``sample``, ``cfg``, parameters), drawing one way."""

    def __init__(self, model, x_train: torch.Tensor, variant: str):
        super().__init__()
        self.model, self.variant, self.cfg = model, variant, model.cfg
        with torch.no_grad():
            self.mu, log_var = model.encode(x_train)
            self.sd = (0.5 * log_var).exp()
        self.detail = FineDetail(model, x_train).residuals  # x_i - decode(mu_i)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.variant.startswith("gaussian"):
            z = self.model.sample_latent(n, generator)
            # the training scan nearest the draw, in units of the posterior's own spread
            nearest = (((z[:, None] - self.mu[None]) / self.sd[None]) ** 2).sum(-1).argmin(1)
        elif self.variant.startswith("between"):
            i = torch.randint(len(self.mu), (n,), generator=generator)
            j = (i + torch.randint(1, len(self.mu), (n,), generator=generator)) % len(self.mu)  # j != i
            t = torch.rand(n, 1, generator=generator)
            z = (1 - t) * self.mu[i] + t * self.mu[j]
            nearest = torch.where(t[:, 0] < 0.5, i, j)
        else:
            nearest = torch.randint(len(self.mu), (n,), generator=generator)
            z = self.mu[nearest] + self.sd[nearest] * torch.randn(n, self.mu.shape[1], generator=generator)
        scans = self.model.decode(z)
        return scans + self.detail[nearest] if self.variant.endswith("+detail") else scans


def run(args) -> dict:
    pre = PreprocessConfig()
    conv = CONV.model_copy(update=json.loads(args.conv)) if args.conv else CONV
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **conv.model_dump())
    config = budget(AugmentConfig(), args.quick)
    counts = sorted(args.counts)
    n_max = max(counts) * args.n_ad
    features = FeatureNet(spatial_dims=3)
    runs, quality = [], []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="variants-") as tmp:
            data = build_data(seed, Path(tmp), args.n_control, args.n_ad, args.n_test, pre,
                              difficulty=args.difficulty)
        x_cn, x_ad, test_ad = data["train_CN"], data["train_AD"], data["test_AD"]
        x_test, y_test = held_out(data)
        f_test, real_grad, real_hf = features(test_ad), gradient_magnitude(test_ad), high_frequency_fraction(test_ad)
        extras = {"duplicates": duplicate_copies(x_ad, n_max, seed)}
        for scope in args.scopes:
            t0 = time.perf_counter()
            if scope == "per-class":
                model, *_ = fit_class_model(x_ad, model_cfg, config, seed * 1009)
            else:
                model, *_ = fit_transfer_model(torch.cat([x_cn, x_ad]), x_ad, model_cfg, config, seed * 1009)
            model.eval()
            print(f"seed {seed}: {scope} trained in {time.perf_counter() - t0:.0f} s", flush=True)
            for variant in args.variants:
                product = variant.startswith("fine_detail")
                sigma = 1.0 if variant == "fine_detail_hp1" else 0.0
                scans, near = draw_synthetic(model if product else Drawer(model, x_ad, variant), n_max, x_ad,
                                             seed * 1009 + 1, config.near_copies, config.near_copy_fraction,
                                             config.max_redraws, fine_detail="nearest" if product else "none",
                                             detail_sigma=sigma)
                name = f"{scope} {variant}"
                extras[name] = scans.float()
                row = {"seed": seed, "source": name, "replaced": near["replaced"], "left_out": near["left_out"],
                       "delivered": len(scans)}
                if len(scans) > 1:
                    row.update({"kid_x1e3": 1e3 * kid(f_test, features(scans)),
                                "grad_ratio": gradient_magnitude(scans) / real_grad,
                                "hf_ratio": high_frequency_fraction(scans) / real_hf})
                quality.append(row)
                print(f"seed {seed}: {name}: {len(scans)} delivered, {near['replaced']} redrawn, "
                      f"{near['left_out']} left out", flush=True)
        if seed == args.seeds[0]:
            RESULTS.mkdir(parents=True, exist_ok=True)
            plot_montage([("real AD (training)", x_ad), ("real AD (held out)", test_ad)]
                         + [(k, v) for k, v in extras.items() if k != "duplicates"],
                         RESULTS / f"sampling_variants_montage{args.tag}.png", seed)
        for name, scans in [("real only", x_ad[:0])] + [(k, v) for k, v in extras.items()]:
            for c in ([0] if name == "real only" else counts):
                extra = scans[: c * args.n_ad]
                x, y = labelled(x_cn, torch.cat([x_ad, extra]))
                s = score(train_classifier(x, y, seed, args.clf_steps, 16, 3e-3, args.clf_recipe), x_test, y_test)
                key = name if not c else f"{name} {c}x"
                runs.append({"seed": seed, "condition": key, "source": name, "count": c,
                             "n_extra": len(extra), **s})
                print(f"seed {seed}: {key:32s} bal.acc {s['balanced_accuracy']:.3f}  AUROC {s['auroc']:.3f}",
                      flush=True)
    return {"runs": runs, "quality": quality}


def report(payload: dict) -> None:
    runs, quality = payload["runs"], payload["quality"]
    seeds = sorted({r["seed"] for r in runs})
    print(f"\nDownstream AD vs CN (hard cohort), seeds {seeds}, mean ± sd over seeds; {payload['machine']}")
    print("| condition | extra AD | " + " | ".join(METRICS) + " |\n|---|---|" + "---|" * len(METRICS))
    for k in dict.fromkeys(r["condition"] for r in runs):
        mine = [r for r in runs if r["condition"] == k]
        cells = " | ".join("{mean:.3f} ± {sd:.3f}".format(**mean_sd([r[m] for r in mine])) for m in METRICS)
        print(f"| {k} | {mine[0]['n_extra']} | {cells} |")
    print("\n| source | KID x 1e3 | gradient / real | HF / real | redrawn | left out |\n|---|---|---|---|---|---|")
    for source in dict.fromkeys(q["source"] for q in quality):
        mine = [q for q in quality if q["source"] == source]
        def cell(key: str, f: str, mine: list[dict] = mine) -> str:
            vals = [q[key] for q in mine if key in q]
            return "{} ± {}".format(*(f.format(v) for v in mean_sd(vals).values())) if vals else "-"

        print(f"| {source} | {cell('kid_x1e3', '{:.1f}')} | {cell('grad_ratio', '{:.3f}')} | "
              f"{cell('hf_ratio', '{:.3f}')} | {cell('replaced', '{:.1f}')} | {cell('left_out', '{:.1f}')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cohort_arguments(ap)
    ap.add_argument("--scopes", nargs="+", default=SCOPES, choices=SCOPES)
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--conv", default="", help="JSON overrides of the conv generators' ModelChoice")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--merge", nargs="+", metavar="TAG", help="merge the JSON of earlier runs and report")
    # --quick: a latent-space drawer, one with detail added, and the product's own fine detail
    args = parse_args(ap, {"seeds": [0], "counts": [1], "n_control": 4, "n_ad": 2, "n_test": 2, "clf_steps": 2,
                           "variants": ["gaussian", "mixture+detail", "fine_detail"]})
    torch.set_num_threads(args.threads)
    if args.merge:
        parts = [json.loads((RESULTS / f"sampling_variants{t}.json").read_text()) for t in args.merge]
        payload = {**parts[0], "runs": [r for p in parts for r in p["runs"]],
                   "quality": [q for p in parts for q in p["quality"]]}
    else:
        payload = {"machine": machine(), "args": vars(args), **run(args)}
        write_result(f"sampling_variants{args.tag}", payload)
    report(payload)


if __name__ == "__main__":
    main()
