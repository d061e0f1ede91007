"""Issue 12's proof on a harder cohort: do synthetic AD scans beat duplicates and classical
augmentation for a downstream classifier, and which generator makes the best ones?

Per seed: a harder demo cohort (``make_demo_cohort(difficulty=D)``: subtler atrophy, anatomical
and intensity heterogeneity, three scanner sites) of 60 CN + 6 AD for training and a held-out
balanced 20 + 20 test cohort (demo seed 1000 + s, same difficulty) that no generator sees. The
classifier of models/classifier.py (small 3-D CNN, 100 steps; ``--clf-recipe``: class-weighted
loss, the recipe until session 8, or class-balanced mini-batches) learns
AD vs CN from the training set plus 1x / 2x / 5x the minority count of extra AD scans from:

  duplicates              random copies of the real AD scans
  classical               MONAI RandAffine + Rand3DElastic copies of the real AD scans
  per-class MCMC-VAE      `model_scope: per_class`: a conv VAE (latent 16) on the 6 AD scans,
                          MALA entropy-adapted refinement (the augment default before issue 12)
  shared plain VAE        one class-conditional conv VAE on all 66 training scans, no MCMC
  shared MCMC-HVAE        one class-conditional hierarchical VAE (hconv: a vector latent over
                          one spatial latent map, 4 channels at 4^3, centered) on all 66 scans,
                          MALA refinement of all layers (272 coordinates)
  more real AD            new real AD subjects of the same cohort: the ceiling a perfect
                          generator could reach (not available to a lab; shown for scale)

Every generator has the augment step budget (AugmentConfig: 600 plain-ELBO + 150 refined steps,
batch 8), is trained again from a fresh seed when it learned its AD subjects too little (augment's
`retrains` rule, since session 9 here), and delivers what `mcvae augment` delivered before session 7: decoder means from
aggregate-posterior latents with near-copies of a training scan redrawn (models.augment.draw_synthetic);
``--fine-detail nearest`` adds augment's new default, the nearest training scan's fine detail. Counts are prefixes
of the largest draw. Also per generator, over its 30 scans: KID against the held-out real AD scans
(random-feature KID of bench/metrics.py), sharpness ratios to the held-out real AD scans
(bench/metrics.py), near-copies redrawn, and training seconds.

    nice -n 15 python bench/cohort_utility.py --seeds 0 1 --tag _a    # one process per seed group
    nice -n 15 python bench/cohort_utility.py --seeds 2 3 4 --tag _b
    python bench/cohort_utility.py --merge _a _b                      # the tables and plots
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohorts import build_data, classical_copies, duplicate_copies, held_out, labelled
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
from models.classifier import RECIPES, train_classifier
from models.config import ModelConfig, SamplerConfig
from models.data import PreprocessConfig
from models.fitting import (
    fit_class_model,
    fit_learning_subjects,
    fit_transfer_model,
    learned_spread,
)
from models.generators import draw_synthetic
from models.options import FineDetailPolicy, ModelChoice
from models.report import memorisation_audit
from models.shared_model import class_view, fit_shared_model

DIFFICULTY = 0.6
GENERATORS = ["per-class MCMC-VAE", "transfer MCMC-VAE", "transfer MCMC-HVAE", "shared plain VAE",
              "shared MCMC-HVAE"]
SOURCES = ["duplicates", "classical", *GENERATORS, "more real AD"]
CONV = ModelChoice(arch="conv", latent_dims=[16], obs_log_var=-4.0)
HCONV = ModelChoice(arch="hconv", latent_dims=[16], latent_channels=(4,), parameterization="centered",
                    obs_log_var=-4.0)


def generator_config(name: str, hconv: ModelChoice, conv: ModelChoice = CONV,
                     quick: bool = False) -> tuple[ModelChoice, AugmentConfig, str]:
    mcmc = budget(AugmentConfig(), quick)
    plain = budget(AugmentConfig(sampler=SamplerConfig(kind="none")), quick)
    return {"per-class MCMC-VAE": (conv, mcmc, "per_class"), "transfer MCMC-VAE": (conv, mcmc, "transfer"),
            "transfer MCMC-HVAE": (hconv, mcmc, "transfer"),
            "shared plain VAE": (conv, plain, "shared"),
            "shared MCMC-HVAE": (hconv, mcmc, "shared")}[name]


def generate(name: str, data: dict, n: int, seed: int, pre: PreprocessConfig, hconv: ModelChoice,
             conv: ModelChoice = CONV, fine_detail: str = "none", paired: bool = False, quick: bool = False):
    """Train one generator as `mcvae augment` would and draw n AD scans; (scans, info, CN scans).
    The CN scans (n, for the paired rows) only with ``paired`` and a shared model, else None."""
    choice, config, scope = generator_config(name, hconv, conv, quick)
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **choice.model_dump())
    started = time.perf_counter()
    x_ad = data["train_AD"]
    # As `mcvae augment` does: a model whose reconstructions of the AD scans lie far closer together
    # than the scans (the class-mean plateau, report.subject_spread) is trained again from a fresh seed.
    if scope == "shared":
        scans = {"CN": data["train_CN"], "AD": x_ad}
        shared, retrained, spreads = fit_learning_subjects(
            lambda s, _: fit_shared_model(scans, model_cfg, config, s),
            lambda fitted: {"AD": learned_spread(class_view(fitted, "AD"), x_ad)},
            config.retrains, seed, lambda *_: None)
        model, history = class_view(shared, "AD"), shared.history
    else:
        def fit(s: int, _attempt: int):
            if scope == "per_class":
                return fit_class_model(x_ad, model_cfg, config, s)
            return fit_transfer_model(torch.cat([data["train_CN"], x_ad]), x_ad, model_cfg, config, s)

        (model, _, history, _), retrained, spreads = fit_learning_subjects(
            fit, lambda fitted: {"AD": learned_spread(fitted[0], x_ad)},
            config.retrains, seed, lambda *_: None)
    seconds = time.perf_counter() - started
    scans, near = draw_synthetic(model, n, data["train_AD"], seed + 1, config.near_copies,
                                 config.near_copy_fraction, config.max_redraws, fine_detail=fine_detail)
    paired_cn = None
    if paired and scope == "shared":
        paired_cn, _ = draw_synthetic(class_view(shared, "CN"), n, data["train_CN"], seed + 2, config.near_copies,
                                      config.near_copy_fraction, config.max_redraws, fine_detail=fine_detail)
    last = history.records[-1] if history.records else None
    # final_accept: the mean over the last tenth of the MCMC epochs (the measure); the last
    # epoch alone is one or two minibatches and scatters by about +-0.1 (session 5 read it: noise).
    info = {"train_seconds": round(seconds, 1), "final_accept": history.final_accept(),
            "last_epoch_accept": getattr(last, "accept", None), "final_elbo": getattr(last, "elbo", None),
            "replaced": near["replaced"], "left_out": near["left_out"], "delivered": len(scans),
            "retrains": retrained, "subject_spread": spreads["AD"]["ratio"] if spreads["AD"] else None}
    return scans.float(), info, None if paired_cn is None else paired_cn.float()


def run(args) -> dict:
    pre = PreprocessConfig()
    hconv = HCONV.model_copy(update=json.loads(args.hconv)) if args.hconv else HCONV
    conv = CONV.model_copy(update=json.loads(args.conv)) if args.conv else CONV
    counts = sorted(args.counts)
    n_max = max(counts) * args.n_ad
    features = FeatureNet(spatial_dims=3)
    runs, quality, montage = [], [], None
    paired_cn: dict[str, torch.Tensor] = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="utility-") as tmp:  # subject k is the same at any count
            data = build_data(seed, Path(tmp), args.n_control, args.n_ad + n_max, args.n_test, pre,
                              difficulty=args.difficulty)
        more_real = data["train_AD"][args.n_ad:]
        data["train_AD"] = data["train_AD"][:args.n_ad]
        x_cn, x_ad = data["train_CN"], data["train_AD"]
        x_test, y_test = held_out(data)
        extras = {"duplicates": duplicate_copies(x_ad, n_max, seed), "classical": classical_copies(x_ad, n_max, seed),
                  "more real AD": more_real}
        print(f"seed {seed}: data {time.perf_counter() - t0:.1f} s", flush=True)
        test_ad = data["test_AD"]
        f_test, real_grad, real_hf = features(test_ad), gradient_magnitude(test_ad), high_frequency_fraction(test_ad)
        for name in args.generators:
            extras[name], info, cn = generate(name, data, n_max, seed * 1009, pre, hconv, conv, args.fine_detail,
                                              paired=args.paired, quick=args.quick)
            if cn is not None:
                paired_cn[f"{name} paired"] = cn
            quality.append({"seed": seed, "source": name, **info})
            print(f"seed {seed}: {name} trained in {info['train_seconds']} s (accept {info['final_accept']}, "
                  f"{info['replaced']} near-copies redrawn, {info['left_out']} left out; subject spread "
                  f"{info['subject_spread']:.2f} after {info['retrains']} retrains)", flush=True)
        for name in ["more real AD", "duplicates", "classical", *args.generators]:
            scans = extras[name]
            audit = memorisation_audit(x_ad, scans)
            row = next((q for q in quality if q["seed"] == seed and q["source"] == name), None)
            if row is None:
                row = {"seed": seed, "source": name}
                quality.append(row)
            row.update({"kid_x1e3": 1e3 * kid(f_test, features(scans)),
                        "grad_ratio": gradient_magnitude(scans) / real_grad,
                        "hf_ratio": high_frequency_fraction(scans) / real_hf,
                        "flagged": len(audit["flagged"]), "n": len(scans)})
        if montage is None:
            montage = [("real AD (training)", x_ad), ("real AD (held out)", test_ad)] + [
                (name, extras[name]) for name in ["classical", *args.generators]]
            RESULTS.mkdir(parents=True, exist_ok=True)
            plot_montage(montage, RESULTS / f"cohort_utility_montage{args.tag}.png", seed)

        conditions = [("real", 0)] + [(name, c) for name in SOURCES if name in extras for c in counts]
        if args.skip_baselines:  # the generator-free rows of an earlier run on the same seeds
            conditions = [(name, c) for name, c in conditions if name in args.generators]
        conditions += [(name, c) for name in paired_cn for c in counts]
        for name, c in conditions:
            t1 = time.perf_counter()
            # a paired row: the generator's AD scans plus as many of its CN scans, so that looking
            # synthetic says nothing about the class
            source = name.removesuffix(" paired")
            extra = extras[source][: c * args.n_ad] if c else x_ad[:0]
            extra_cn = paired_cn[name][: c * args.n_ad] if name in paired_cn else x_cn[:0]
            x, y = labelled(torch.cat([x_cn, extra_cn]), torch.cat([x_ad, extra]))
            s = score(train_classifier(x, y, seed, args.clf_steps, 16, 3e-3, args.clf_recipe), x_test, y_test)
            key = "real only" if not c else f"{name} {c}x"
            runs.append({"seed": seed, "condition": key, "source": name if c else "real only", "count": c,
                         "n_extra": len(extra), "n_extra_cn": len(extra_cn), **s})
            print(f"seed {seed}: {key:24s} bal.acc {s['balanced_accuracy']:.3f}  AUROC {s['auroc']:.3f}  "
                  f"({time.perf_counter() - t1:.1f} s)", flush=True)
    return {"runs": runs, "quality": quality}


def report(payload: dict) -> None:
    runs, quality, args = payload["runs"], payload["quality"], payload["args"]
    seeds = sorted({r["seed"] for r in runs})
    keys = list(dict.fromkeys(r["condition"] for r in runs))
    print(f"\nDownstream AD vs CN, difficulty {args['difficulty']}, seeds {seeds}; train {args['n_control']} CN + "
          f"{args['n_ad']} AD; test {args['n_test']} + {args['n_test']} held-out real; mean ± sd over seeds")
    print("| condition | extra AD | balanced accuracy | AD recall | AUROC |\n|---|---|---|---|---|")
    summary = {}
    for k in keys:
        mine = [r for r in runs if r["condition"] == k]
        summary[k] = {m: mean_sd([r[m] for r in mine]) for m in METRICS}
        cells = " | ".join(f"{summary[k][m]['mean']:.3f} ± {summary[k][m]['sd']:.3f}" for m in METRICS)
        print(f"| {k} | {mine[0]['n_extra']} | {cells} |")
    print("\nGenerated / extra scans (30 per seed): KID x 1e3 vs held-out real AD, sharpness ratios to held-out "
          "real AD, flagged near-copies after redraws, train seconds, final acceptance; mean ± sd over seeds")
    print("| source | KID x 1e3 | gradient / real | HF / real | flagged | redrawn | train s | final accept (last 10 %) |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda vals, f: f"{f.format(mean_sd(vals)['mean'])} ± {f.format(mean_sd(vals)['sd'])}" if vals else ""
    for source in list(dict.fromkeys(q["source"] for q in quality)):
        mine = [q for q in quality if q["source"] == source]

        def col(key: str, mine: list[dict] = mine) -> list[float]:
            return [q[key] for q in mine if q.get(key) is not None]

        print(f"| {source} | {fmt(col('kid_x1e3'), '{:.1f}')} | {fmt(col('grad_ratio'), '{:.3f}')} | "
              f"{fmt(col('hf_ratio'), '{:.3f}')} | {fmt(col('flagged'), '{:.1f}')} | {fmt(col('replaced'), '{:.1f}')} | "
              f"{fmt(col('train_seconds'), '{:.0f}')} | {fmt(col('final_accept'), '{:.3f}')} |")
    payload["summary"] = summary
    plot(summary, payload, RESULTS / f"cohort_utility{payload.get('tag', '')}.png")


def plot(summary: dict, payload: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["count"] for r in payload["runs"] if r["count"]})
    sources = list(dict.fromkeys(r["source"] for r in payload["runs"] if r["count"]))
    colours = {"duplicates": "tab:gray", "classical": "tab:green", "per-class MCMC-VAE": "tab:orange",
               "shared plain VAE": "tab:blue", "shared MCMC-HVAE": "tab:red", "more real AD": "k"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ["balanced_accuracy", "auroc"]):
        if "real only" in summary:
            base = summary["real only"][metric]
            ax.axhline(base["mean"], color="k", lw=1, ls="--", label="real only")
            ax.axhspan(base["mean"] - base["sd"], base["mean"] + base["sd"], color="k", alpha=0.07)
        for k, source in enumerate(sources):
            xs = [c + (k - (len(sources) - 1) / 2) * 0.08 for c in counts]
            stats = [summary[f"{source} {c}x"][metric] for c in counts]
            ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["sd"] for s in stats], marker="o", ms=4, capsize=2,
                        lw=1, color=colours.get(source), ls=":" if source == "more real AD" else "-", label=source)
        ax.set_xticks(counts)
        ax.set_xlabel("extra AD scans (x minority count)")
        ax.set_title(metric.replace("_", " "))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"harder demo cohort (difficulty {payload['args']['difficulty']}), held-out real test set; "
                 f"mean ± sd over {len({r['seed'] for r in payload['runs']})} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _first_of_each(rows: list[dict], key: str) -> list[dict]:
    """One row per (seed, key): a row that a later run repeated (the same seed and model, rerun for
    its paired rows) is counted once."""
    seen, kept = set(), []
    for row in rows:
        if (row["seed"], row[key]) not in seen:
            seen.add((row["seed"], row[key]))
            kept.append(row)
    return kept


def add_cohort_arguments(ap: argparse.ArgumentParser) -> None:
    """The hard cohort's and the classifier's settings (shared with bench/sampling_variants.py)."""
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--difficulty", type=float, default=DIFFICULTY)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--n-control", type=int, default=60)
    ap.add_argument("--n-ad", type=int, default=6)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--clf-steps", type=int, default=100)
    ap.add_argument("--clf-recipe", choices=RECIPES, default="weighted",
                    help="how the classifier meets the class imbalance (models/classifier.py RECIPES)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cohort_arguments(ap)
    ap.add_argument("--generators", nargs="*", default=GENERATORS, choices=GENERATORS)
    ap.add_argument("--hconv", default="", help="JSON overrides of the MCMC-HVAE generators' ModelChoice")
    ap.add_argument("--conv", default="", help="JSON overrides of the conv generators' ModelChoice")
    ap.add_argument("--fine-detail", choices=get_args(FineDetailPolicy), default="none",
                    help="AugmentConfig.fine_detail of every generator (none: the decoder means that every "
                         "figure before session 7 measured; augment's default is nearest)")
    ap.add_argument("--paired", action="store_true",
                    help="shared generators also draw as many CN scans, scored in extra '<name> paired' rows")
    ap.add_argument("--skip-baselines", action="store_true",
                    help="score only the generators' rows (real only, duplicates, classical and more real AD "
                         "come from an earlier run on the same seeds)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--merge", nargs="+", metavar="TAG", help="merge the JSON of earlier runs and report")
    # --quick: one generator of each scope (per-class, transfer, shared), conv and hconv both
    args = parse_args(ap, {"seeds": [0], "counts": [1], "n_control": 4, "n_ad": 2, "n_test": 2, "clf_steps": 2,
                           "generators": ["per-class MCMC-VAE", "transfer MCMC-HVAE", "shared MCMC-HVAE"]})
    if args.merge:
        parts = [json.loads((RESULTS / f"cohort_utility{t}.json").read_text()) for t in args.merge]
        payload = {"args": parts[0]["args"], "machine": parts[0]["machine"], "tag": args.tag,
                   "runs": _first_of_each([r for p in parts for r in p["runs"]], "condition"),
                   "quality": _first_of_each([q for p in parts for q in p["quality"]], "source"),
                   "merged": args.merge}
        report(payload)
        write_result(f"cohort_utility{args.tag}", payload)
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    payload = {"args": vars(args), "machine": machine(), "tag": args.tag, "command": "python " + " ".join(sys.argv),
               **run(args)}
    payload["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{payload['machine']}; {payload['seconds'] / 60:.1f} min")
    report(payload)
    write_result(f"cohort_utility{args.tag}", payload)


if __name__ == "__main__":
    main()
