"""Do MCMC-refined synthetic scans help a downstream classifier? (issue #7, experiments 4 and 5)

For each seed: an imbalanced demo cohort (default 60 CN, 6 AD, 32^3) for training and a
held-out balanced real test set (20 CN + 20 AD, demo seed 1000 + seed), both preprocessed with
the default PreprocessConfig. The small 3-D CNN of models/classifier.py (fixed step budget,
"weighted" recipe: class-weighted cross-entropy) learns AD vs CN from

  real           the imbalanced real training set only
  classical      + MONAI RandAffine/Rand3DElastic copies of real AD scans
  duplicates     + random duplicates of real AD scans (random oversampling)
  plain-VAE      + scans from a VAE trained on the real AD scans without MCMC (sampler "none")
  MCMC-VAE       + scans from the same VAE trained with MALA refinement (default AugmentConfig)
  ... prior      the same two trained models, latents drawn from the prior N(0, I) instead of the
                 aggregate-posterior Gaussian (ModelConfig.sampling; "aggregate" is the default)

with 1x, 2x, 5x the minority count of extra AD scans. Each generative model is trained once per
seed (same init seed, same step budget) and sampled once at the largest count; smaller counts
are prefixes. Scored on the balanced test set: balanced accuracy, AD recall, AUROC.

Experiment 5 (memorisation): for every extra-scan source, the nearest-real-AD-scan distance of
each extra scan vs the real-to-real nearest-neighbour distances (models.report.memorisation_audit).

    python bench/downstream.py                       # seeds 0-4, default VAE budget
    python bench/downstream.py --seeds 0 1 --pretrain-steps 300 --mcmc-steps 75   # quicker
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohorts import build_data, classical_copies, duplicate_copies, held_out, labelled
from bench.common import RESULTS, machine, parse_args, write_result
from bench.metrics import METRICS, mean_sd, real_nn, score
from bench.plots import plot_montage
from models.augment import AugmentConfig, write_synthetic
from models.classifier import train_classifier
from models.config import ModelConfig, SamplerConfig
from models.data import PreprocessConfig, target_affine
from models.fitting import fit_class_model
from models.report import memorisation_audit

METHODS = ["classical", "duplicates", "plain-VAE prior", "MCMC-VAE prior", "plain-VAE", "MCMC-VAE"]
COLOURS = {"real AD to real AD": "k", "classical": "tab:green", "duplicates": "tab:gray",
           "plain-VAE prior": "lightsteelblue", "MCMC-VAE prior": "lightsalmon", "plain-VAE": "tab:blue",
           "MCMC-VAE": "tab:red"}
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "ad_recall": "AD recall", "auroc": "AUROC"}


# ----------------------------------------------------------------------------- generators

def vae_scans(x_ad: torch.Tensor, cfg: AugmentConfig, pre: PreprocessConfig, n: int, seed: int, out: Path):
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **cfg.model.model_dump())
    started = time.perf_counter()
    model, _sampler, history, train_cfg = fit_class_model(x_ad, model_cfg, cfg, seed)
    train_s = time.perf_counter() - started
    model.eval()
    scans, _ = write_synthetic(model, n, out, "AD", target_affine(pre), seed=seed + 1, model_id="bench",
                               sampler_name=cfg.sampler.kind)
    model.cfg = model.cfg.model_copy(update={"sampling": "prior"})  # same model, prior latents
    prior_scans, _ = write_synthetic(model, n, out / "prior", "AD", target_affine(pre), seed=seed + 1,
                                     model_id="bench", sampler_name=cfg.sampler.kind)
    last = history.records[-1] if history.records else None
    info = {"train_seconds": round(train_s, 1), "final_elbo": getattr(last, "elbo", None),
            "final_accept": getattr(last, "accept", None),
            "pretrain_epochs": train_cfg.pretrain_epochs, "epochs": train_cfg.epochs,
            "batch_size": train_cfg.batch_size}
    return scans.float().clamp(0, 1), prior_scans.float().clamp(0, 1), info


# ----------------------------------------------------------------------------- plots

def plot_utility(summary: dict, counts: list[int], n_ad: int, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
    for ax, metric in zip(axes, METRICS):
        base = summary["real"][metric]
        ax.axhline(base["mean"], color="k", lw=1, ls="--", label="real only")
        ax.axhspan(base["mean"] - base["sd"], base["mean"] + base["sd"], color="k", alpha=0.07)
        for k, method in enumerate(METHODS):
            xs = np.array(counts) + (k - (len(METHODS) - 1) / 2) * 0.06
            stats = [summary[f"{method} {c}x"][metric] for c in counts]
            ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["sd"] for s in stats], marker="o", ms=4,
                        capsize=2, lw=1, color=COLOURS[method], label=method)
        ax.set_xticks(counts)
        ax.set_xticklabels([f"{c}x ({c * n_ad})" for c in counts])
        ax.set_xlabel("extra AD scans (x minority count)")
        ax.set_title(METRIC_NAMES[metric])
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_memorisation(dist: dict[str, list[float]], threshold: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    finite = [d for v in dist.values() for d in v]
    bins = np.linspace(0, max(finite) * 1.05, 40)
    for name, values in dist.items():
        ax.hist(values, bins=bins, histtype="step", lw=1.5, color=COLOURS.get(name), label=f"{name} (n={len(values)})",
                density=True)
    ax.axvline(threshold, color="k", ls=":", lw=1, label="copy threshold (smallest over seeds)")
    ax.set_xlabel("RMS distance per voxel to the nearest real training AD scan")
    ax.set_ylabel("density")
    ax.set_title("Memorisation audit, all seeds pooled (duplicates: all at 0, not drawn)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 5], help="extra AD scans, x minority count")
    ap.add_argument("--n-control", type=int, default=60)
    ap.add_argument("--n-ad", type=int, default=6)
    ap.add_argument("--n-test", type=int, default=20, help="test scans per class")
    ap.add_argument("--pretrain-steps", type=int, default=AugmentConfig().pretrain_steps)
    ap.add_argument("--mcmc-steps", type=int, default=AugmentConfig().mcmc_steps)
    ap.add_argument("--clf-steps", type=int, default=100)
    ap.add_argument("--clf-batch", type=int, default=16)
    ap.add_argument("--clf-lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="start no further seed once the next one would end past this budget")
    args = parse_args(ap, {"seeds": [0], "counts": [1], "n_control": 4, "n_ad": 2, "n_test": 2,
                           "pretrain_steps": 4, "mcmc_steps": 2, "clf_steps": 2})
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    pre = PreprocessConfig()
    counts = sorted(args.counts)
    n_max = max(counts) * args.n_ad
    vae_cfgs = {
        "plain-VAE": AugmentConfig(sampler=SamplerConfig(kind="none"), pretrain_steps=args.pretrain_steps,
                                   mcmc_steps=args.mcmc_steps),
        "MCMC-VAE": AugmentConfig(pretrain_steps=args.pretrain_steps, mcmc_steps=args.mcmc_steps),
    }
    runs, generators, memo = [], {}, {}
    dist_pool: dict[str, list[float]] = {k: [] for k in ["real AD to real AD", *METHODS] if k != "duplicates"}
    thresholds, montage_rows = [], None
    done_seeds: list[int] = []
    for seed in args.seeds:
        if done_seeds and args.max_minutes is not None:
            per_seed = (time.perf_counter() - started) / len(done_seeds)
            if time.perf_counter() - started + per_seed > 60 * args.max_minutes:
                print(f"time budget: stopping after seeds {done_seeds}", flush=True)
                break
        with tempfile.TemporaryDirectory(prefix="downstream-") as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            data = build_data(seed, tmp, args.n_control, args.n_ad, args.n_test, pre)
            x_cn, x_ad = data["train_CN"], data["train_AD"]
            x_test, y_test = held_out(data)
            extras = {"classical": classical_copies(x_ad, n_max, seed), "duplicates": duplicate_copies(x_ad, n_max, seed)}
            print(f"seed {seed}: data {time.perf_counter() - t0:.1f}s", flush=True)
            for name, cfg in vae_cfgs.items():
                extras[name], extras[f"{name} prior"], info = vae_scans(x_ad, cfg, pre, n_max, seed * 1009, tmp / name)
                generators.setdefault(name, []).append({"seed": seed, **info})
                print(f"seed {seed}: {name} trained in {info['train_seconds']}s "
                      f"(final ELBO {info['final_elbo']}, accept {info['final_accept']})", flush=True)
            if montage_rows is None:
                montage_rows = [("real AD (training)", x_ad), ("classical (MONAI affine+elastic)", extras["classical"]),
                                ("plain VAE, prior latents", extras["plain-VAE prior"]),
                                ("MCMC VAE (MALA entropy), prior latents", extras["MCMC-VAE prior"]),
                                ("plain VAE, aggregate latents", extras["plain-VAE"]),
                                ("MCMC VAE, aggregate latents", extras["MCMC-VAE"])]

            # Experiment 5: memorisation, at the largest count.
            memo[seed] = {}
            for name in METHODS:
                audit = memorisation_audit(x_ad, extras[name])
                memo[seed][name] = {"real_to_real_nn": audit["real_to_real_nn"],
                                    "synthetic_to_real_nn": audit["synthetic_to_real_nn"],
                                    "copy_threshold": audit["copy_threshold"], "n_flagged": len(audit["flagged"]),
                                    "n": len(extras[name])}
                if name in dist_pool:
                    dist_pool[name] += audit["synthetic_nn"]
            dist_pool["real AD to real AD"] += real_nn(x_ad)
            thresholds.append(memo[seed]["MCMC-VAE"]["copy_threshold"])

            # Experiment 4: downstream classifier.
            conditions = [("real", 0, None)] + [(m, c, m) for m in METHODS for c in counts]
            for method, c, source in conditions:
                t1 = time.perf_counter()
                extra = extras[source][: c * args.n_ad] if source else x_ad[:0]
                x, y = labelled(x_cn, torch.cat([x_ad, extra]))
                net = train_classifier(x, y, seed, args.clf_steps, args.clf_batch, args.clf_lr, "weighted")
                s = score(net, x_test, y_test)
                key = "real" if source is None else f"{method} {c}x"
                runs.append({"seed": seed, "condition": key, "method": method, "count": c,
                             "n_extra": len(extra), **s, "seconds": round(time.perf_counter() - t1, 1)})
                print(f"seed {seed}: {key:16s} bal.acc {s['balanced_accuracy']:.3f}  AD recall "
                      f"{s['ad_recall']:.3f}  AUROC {s['auroc']:.3f}  ({time.perf_counter() - t1:.1f}s)", flush=True)

        done_seeds.append(seed)

    keys = ["real"] + [f"{m} {c}x" for m in METHODS for c in counts]
    summary = {k: {m: mean_sd([r[m] for r in runs if r["condition"] == k]) for m in METRICS} for k in keys}
    memo_summary = {}
    for name in METHODS:
        memo_summary[name] = {
            "synthetic_to_real_nn_median": mean_sd([memo[s][name]["synthetic_to_real_nn"]["median"] for s in memo]),
            "synthetic_to_real_nn_min": mean_sd([memo[s][name]["synthetic_to_real_nn"]["min"] for s in memo]),
            "flagged_fraction": mean_sd([memo[s][name]["n_flagged"] / memo[s][name]["n"] for s in memo]),
        }
    memo_summary["real AD to real AD"] = {
        "nn_median": mean_sd([memo[s]["MCMC-VAE"]["real_to_real_nn"]["median"] for s in memo]),
        "nn_min": mean_sd([memo[s]["MCMC-VAE"]["real_to_real_nn"]["min"] for s in memo])}

    elapsed = time.perf_counter() - started
    mach = machine()
    print()
    print(f"Downstream AD-vs-CN classifier, {len(done_seeds)} seeds {done_seeds}; train {args.n_control} CN + "
          f"{args.n_ad} AD, test {args.n_test} + {args.n_test}; VAE {args.pretrain_steps}+{args.mcmc_steps} steps; "
          f"{mach}; {elapsed / 60:.1f} min")
    print("| condition | extra AD | balanced accuracy | AD recall | AUROC |")
    print("|---|---|---|---|---|")
    for k in keys:
        n_extra = 0 if k == "real" else int(k.split()[-1][:-1]) * args.n_ad
        cells = " | ".join(f"{summary[k][m]['mean']:.3f} ± {summary[k][m]['sd']:.3f}" for m in METRICS)
        print(f"| {k} | {n_extra} | {cells} |")
    print()
    print(f"Memorisation (largest count, {n_max} scans per source per seed; RMS per voxel, mean ± sd over seeds)")
    print("| source | median NN distance to real AD | min NN distance | flagged as copies |")
    print("|---|---|---|---|")
    r = memo_summary["real AD to real AD"]
    print(f"| real AD to other real AD | {r['nn_median']['mean']:.4f} ± {r['nn_median']['sd']:.4f} | "
          f"{r['nn_min']['mean']:.4f} ± {r['nn_min']['sd']:.4f} | (threshold = 0.5 x min) |")
    for name in METHODS:
        m = memo_summary[name]
        print(f"| {name} | {m['synthetic_to_real_nn_median']['mean']:.4f} ± {m['synthetic_to_real_nn_median']['sd']:.4f}"
              f" | {m['synthetic_to_real_nn_min']['mean']:.4f} ± {m['synthetic_to_real_nn_min']['sd']:.4f} | "
              f"{100 * m['flagged_fraction']['mean']:.0f} % |")
    for name, infos in generators.items():
        print(f"{name}: train seconds {[i['train_seconds'] for i in infos]}, final ELBO "
              f"{[round(i['final_elbo'], 1) if i['final_elbo'] is not None else None for i in infos]}, "
              f"final acceptance {[round(i['final_accept'], 3) if i['final_accept'] is not None else None for i in infos]}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    plot_utility(summary, counts, args.n_ad, RESULTS / "downstream_utility.png",
                 f"AD vs CN, test {args.n_test}+{args.n_test} real; mean ± sd over {len(done_seeds)} seeds")
    if montage_rows:
        plot_montage(montage_rows, RESULTS / "downstream_montage.png", done_seeds[0])
    plot_memorisation(dist_pool, min(thresholds), RESULTS / "downstream_memorisation.png")
    out = write_result("downstream", {
        "machine": mach, "command": "python " + " ".join(sys.argv), "args": vars(args), "seeds_done": done_seeds,
        "seconds": round(elapsed, 1), "summary": summary, "memorisation": memo_summary,
        "memorisation_per_seed": {str(k): v for k, v in memo.items()}, "generators": generators, "runs": runs,
        "classifier": {"arch": "SmallCNN 8/16/32 + GAP + linear", "steps": args.clf_steps,
                       "batch": args.clf_batch, "lr": args.clf_lr, "loss": "class-weighted CE",
                       "augmentation": "random left-right flip"},
    })
    print(f"wrote {out} and downstream_{{utility,montage,memorisation}}.png")


if __name__ == "__main__":
    main()
