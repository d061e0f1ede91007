"""Issue 22's downstream table: which way of drawing minority scans helps a classifier on real held-out
scans of the hard demo cohort, and do MCMC-refined posteriors give better counterfactuals?

Per seed: the hard demo cohort (difficulty 0.6) of 60 CN + 6 AD for training, a held-out balanced
20 + 20 test cohort (demo seed 1000 + s) that no generator sees, and the ground truth of every
counterfactual: each training CN subject rendered again with the AD effect
(``models.data.make_demo_counterfactuals``). One shared class-conditional MCMC-HVAE (augment's
default model and budget, with its retrain rule) is trained per seed; from it:

  shared aggregate      new latents from the AD aggregate posterior, decoded, with the nearest
                        training scan's fine detail (augment's generator before issue 22)
  counterfactual MCMC   CN training subjects moved to AD; abduction by the model's tuned MALA
                        chain (4 draws x 10 transitions from the encoder), plus the subject's residual
  counterfactual mean   the same with the encoder's posterior mean as the abduction
  interpolation         between two AD training subjects in the refined latent space (t in
                        [0.25, 0.75]) plus their residuals mixed with variance-preserving weights
  variation             each AD training subject moved 0.5 prior SDs along the difference of two
                        CN subjects' refined latents, plus its own residual

beside real only, duplicates of the 6 AD scans, and more real AD subjects (the ceiling). The
classifier (models.classifier: small CNN, 100 steps, class-balanced mini-batches) learns AD vs CN
from the training set plus 1x / 2x / 5x the minority count of extra AD scans. Also per generator:
effect recovery R = 1 - RMS(cf - truth) / RMS(source - truth) (counterfactuals), gradient-energy
ratio to the real training AD scans, and the two-sample AUROC (real training AD vs the 5x scans).
``--oracle-only`` needs no model: the true counterfactuals, and the true change averaged over the CN
subjects added to each (what a perfectly estimated population-level class shift would give).

    nice python bench/generators.py --seeds 0 1 2 --tag _a     # one process per seed group
    python bench/generators.py --merge _a _b                    # the tables
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

from bench.cohorts import build_data, duplicate_copies, held_out, labelled
from bench.common import RESULTS, budget, machine, parse_args, write_result
from bench.metrics import mean_sd, rms, score
from bench.plots import plot_montage
from models.augment import AugmentConfig
from models.classifier import STEPS, train_classifier, two_sample_auroc
from models.config import ModelConfig
from models.counterfactual import Variations, counterfactuals, interpolations
from models.data import PreprocessConfig, load_tensors, make_demo_counterfactuals
from models.fitting import fit_learning_subjects, learned_spread
from models.generators import draw_synthetic
from models.report import gradient_energy
from models.shared_model import class_view, fit_shared_model

GENERATORS = ["shared aggregate", "counterfactual MCMC", "counterfactual mean", "interpolation", "variation"]
SOURCES = ["duplicates", *GENERATORS, "more real AD"]
METRICS = ["balanced_accuracy", "auroc"]


def run_seed(seed: int, args) -> tuple[list[dict], list[dict]]:
    pre = PreprocessConfig()
    n_max = max(args.counts) * args.n_ad
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="generators-") as tmp:
        data = build_data(seed, Path(tmp), args.n_control, args.n_ad + n_max, args.n_test, pre,
                          difficulty=args.difficulty)
        truth = load_tensors(make_demo_counterfactuals(Path(tmp) / "truth", range(args.n_control), seed=seed,
                                                       difficulty=args.difficulty), pre, Path(tmp) / "cache-t", "AD")
    more_real = data["train_AD"][args.n_ad:]
    x_cn, x_ad = data["train_CN"], data["train_AD"][:args.n_ad]
    x_test, y_test = held_out(data)
    print(f"seed {seed}: data {time.perf_counter() - t0:.1f} s", flush=True)

    order = torch.randperm(len(x_cn), generator=torch.Generator().manual_seed(seed))[:n_max]
    if args.oracle_only:  # what a perfect counterfactual generator would give: the true AD versions
        # and the best any one change for every subject can do: the true change averaged over the
        # CN subjects, added to each (the bound of an additive, population-level class shift)
        mean_change = (x_cn + (truth - x_cn).mean(0, keepdim=True)).clamp(0, 1)
        extras = {"duplicates": duplicate_copies(x_ad, n_max, seed), "true counterfactual (oracle)": truth[order],
                  "true mean change (oracle)": mean_change[order], "more real AD": more_real}
        return score_rows(extras, list(extras), args.counts, x_cn, x_ad, x_test, y_test, seed, args.clf_steps,
                          f"seed {seed}"), []

    config = budget(AugmentConfig(), args.quick)
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
    t0 = time.perf_counter()
    scans = {"CN": x_cn, "AD": x_ad}
    shared, retrained, _ = fit_learning_subjects(
        lambda s, _: fit_shared_model(scans, model_cfg, config, s),
        lambda fitted: {"AD": learned_spread(class_view(fitted, "AD"), x_ad)}, config.retrains, seed * 1009,
        lambda *_: None)
    train_s = time.perf_counter() - t0
    print(f"seed {seed}: shared model {train_s:.0f} s, {retrained} retrains", flush=True)

    extras, quality = draw_every_generator(shared, x_cn, x_ad, n_max, seed, "CN", "AD", truth, config.near_copies,
                                           args.generators, tuple(args.variation_scales))
    extras.update({"duplicates": duplicate_copies(x_ad, n_max, seed), "more real AD": more_real})
    if seed == args.seeds[0]:  # what the scans look like: counterfactuals beside their source and truth
        panels = [("real AD (training)", x_ad), ("shared aggregate", extras.get("shared aggregate")),
                  ("CN source of each counterfactual", x_cn[order] if "counterfactual MCMC" in extras else None),
                  ("counterfactual MCMC", extras.get("counterfactual MCMC")),
                  ("true AD version of the source", truth[order] if "counterfactual MCMC" in extras else None),
                  ("interpolation", extras.get("interpolation")), ("variation", extras.get("variation"))]
        plot_montage([(name, scans) for name, scans in panels if scans is not None],
                     RESULTS / f"generators_montage{args.tag}.png", seed)
    # the two-sample test's classifiers: the library's 100 steps (--quick: --clf-steps)
    score_quality(extras, quality, x_ad, seed, train_s, args.clf_steps if args.quick else STEPS)
    for row in quality:
        row["seed"] = seed

    if args.recovery_only:  # effect recovery, sharpness and the two-sample test only
        return [], quality
    names = [*SOURCES[:-1], *(variation_name(v, args.variation_scales) for v in args.variation_scales), SOURCES[-1]]
    runs = score_rows(extras, [n for n in dict.fromkeys(names) if n in extras], args.counts, x_cn, x_ad, x_test, y_test, seed,
                      args.clf_steps, f"seed {seed}")
    return runs, quality


def draw_every_generator(shared, x_major: torch.Tensor, x_minor: torch.Tensor, n_max: int, seed: int,
                         major: str, minor: str, truth: torch.Tensor | None = None, near_copies: str = "replace",
                         chosen: list[str] | None = None, scales: tuple[float, ...] = (0.5,)):
    """Every generator's (or the ``chosen`` ones') n_max minority scans from one shared model;
    (extras, quality rows). With ``truth`` (each majority scan's true minority version), the
    counterfactuals' effect recovery R. ``scales``: the variations' steps, one row each."""
    chosen = chosen or GENERATORS
    cn, ad = shared.index(major), shared.index(minor)
    order = torch.randperm(len(x_major), generator=torch.Generator().manual_seed(seed))[:n_max]
    extras, quality = {}, []
    t0 = time.perf_counter()
    if "shared aggregate" in chosen:
        extras["shared aggregate"], _ = draw_synthetic(class_view(shared, minor), n_max, x_minor, seed + 1,
                                                       near_copies, fine_detail="nearest")
    for name, how in (("counterfactual MCMC", "mcmc"), ("counterfactual mean", "mean")):
        if name not in chosen:
            continue
        t1 = time.perf_counter()
        sources = x_major[order] if truth is None else x_major  # R needs every subject's truth
        cf, _, info = counterfactuals(shared.model, shared.sampler, sources, cn, ad, how, seed=seed + 2)
        row = {"source": name, "abduction_accept": info.accept, "seconds": round(time.perf_counter() - t1, 1)}
        if truth is not None:
            recovery = 1 - rms(cf, truth) / rms(x_major, truth)
            row.update({"R_mean": float(recovery.mean()), "R_median": float(recovery.median())})
            cf = cf[order]
        extras[name] = cf
        quality.append(row)
    g = torch.Generator().manual_seed(seed + 3)
    if "interpolation" in chosen:
        pairs = [tuple(torch.randperm(len(x_minor), generator=g)[:2].tolist()) for _ in range(n_max)]
        weights = (0.25 + 0.5 * torch.rand(n_max, generator=g)).tolist()
        extras["interpolation"], _ = interpolations(shared.model, shared.sampler, x_minor, ad, pairs, weights, "mcmc",
                                                    seed=seed + 4)
    if "variation" in chosen:  # each minority subject in turn, moved along a random majority pair's difference
        picks = [(k % len(x_minor), *torch.randperm(len(x_major), generator=g)[:2].tolist()) for k in range(n_max)]
        moving = Variations(shared.model, shared.sampler, x_minor, ad, x_major, cn, "mcmc", seed=seed + 5)
        for scale in scales:  # one abduction, every scale: the rows differ only in the step
            extras[variation_name(scale, scales)] = moving(picks, scale)
    print(f"drawn in {time.perf_counter() - t0:.0f} s", flush=True)
    return extras, quality


def variation_name(scale: float, scales) -> str:
    """The row of variations at ``scale``: plain "variation" for augment's default scale alone."""
    return "variation" if tuple(scales) == (0.5,) else f"variation x{scale:g}"


def score_quality(extras: dict, quality: list[dict], x_minor: torch.Tensor, seed: int, train_s: float,
                  steps: int = STEPS) -> None:
    """Gradient-energy ratio to the real minority scans, and each generator's two-sample AUROC
    (its classifiers trained ``steps`` steps)."""
    real_energy = gradient_energy(x_minor)
    for name, scans in extras.items():
        row = next((q for q in quality if q["source"] == name), None)
        if row is None:
            row = {"source": name}
            quality.append(row)
        row["energy_ratio"] = gradient_energy(scans) / real_energy
        if name not in ("duplicates", "more real AD"):
            row["two_sample_auroc"] = two_sample_auroc(x_minor, scans, seed, steps=steps)
        row["train_seconds"] = round(train_s, 1)


def score_rows(extras: dict, sources: list[str], counts: list[int], x_major, x_minor, x_test, y_test, seed: int,
               steps: int, tag: str) -> list[dict]:
    """The downstream classifier on real + each source's first c x minority-count scans."""
    runs = []
    for name, c in [("real only", 0)] + [(name, c) for name in sources for c in counts]:
        extra = extras[name][: c * len(x_minor)] if c else x_minor[:0]
        x, y = labelled(x_major, torch.cat([x_minor, extra]))
        scores = score(train_classifier(x, y, seed, steps), x_test, y_test)
        s = {k: scores[k] for k in ("auroc", "balanced_accuracy")}
        key = name if not c else f"{name} {c}x"
        runs.append({"seed": seed, "condition": key, "source": name, "count": c, "n_extra": len(extra), **s})
        print(f"{tag}: {key:26s} bal.acc {s['balanced_accuracy']:.3f}  AUROC {s['auroc']:.3f}", flush=True)
    return runs


def report(payload: dict) -> None:
    runs, quality = payload["runs"], payload["quality"]
    seeds = sorted({r["seed"] for r in runs or quality})
    print(f"\nhard demo cohort (difficulty {payload['args']['difficulty']}), seeds {seeds}; mean ± sd over seeds")
    print("| condition | balanced accuracy | AUROC | seeds above duplicates (AUROC / bal. acc.) |\n|---|---|---|---|")
    by = {(r["seed"], r["condition"]): r for r in runs}
    for key in dict.fromkeys(r["condition"] for r in runs):
        mine = [r for r in runs if r["condition"] == key]
        cells = " | ".join(f"{mean_sd([r[m] for r in mine])['mean']:.3f} ± {mean_sd([r[m] for r in mine])['sd']:.3f}"
                           for m in METRICS)
        count = mine[0]["count"]
        wins = ""
        if count and mine[0]["source"] not in ("duplicates", "more real AD"):
            dup = [(r, by[(r["seed"], f"duplicates {count}x")]) for r in mine if (r["seed"], f"duplicates {count}x") in by]
            wins = " / ".join(f"{sum(r[m] > d[m] for r, d in dup)} of {len(dup)}" for m in ("auroc", "balanced_accuracy"))
        print(f"| {key} | {cells} | {wins} |")
    print("\n| source | effect recovery R (mean over subjects) | gradient energy / real AD | two-sample AUROC |")
    print("|---|---|---|---|")
    for source in dict.fromkeys(q["source"] for q in quality):
        mine = [q for q in quality if q["source"] == source]

        def cell(key: str, mine: list[dict] = mine) -> str:
            vals = [q[key] for q in mine if q.get(key) is not None]
            return f"{mean_sd(vals)['mean']:.3f} ± {mean_sd(vals)['sd']:.3f}" if vals else ""

        print(f"| {source} | {cell('R_mean')} | {cell('energy_ratio')} | {cell('two_sample_auroc')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--difficulty", type=float, default=0.6)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--n-control", type=int, default=60)
    ap.add_argument("--n-ad", type=int, default=6)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--clf-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recovery-only", action="store_true",
                    help="no classifier rows: effect recovery R, sharpness and two-sample AUROC (e.g. per difficulty)")
    ap.add_argument("--oracle-only", action="store_true",
                    help="no model: real only, duplicates, the true counterfactuals of the CN subjects, the true "
                         "change averaged over them added to each, more real AD")
    ap.add_argument("--generators", nargs="+", choices=GENERATORS, default=None,
                    help="draw only these generators (default: every one)")
    ap.add_argument("--variation-scales", type=float, nargs="+", default=[0.5],
                    help="the variations' steps in prior SDs, one row each (augment's default: 0.5)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--merge", nargs="+", metavar="TAG")
    args = parse_args(ap, {"seeds": [0], "counts": [1], "n_control": 4, "n_ad": 2, "n_test": 2, "clf_steps": 2})
    if args.merge:
        parts = [json.loads((RESULTS / f"generators{t}.json").read_text()) for t in args.merge]
        payload = {"args": parts[0]["args"], "machine": parts[0]["machine"], "merged": args.merge,
                   "runs": [r for p in parts for r in p["runs"]], "quality": [q for p in parts for q in p["quality"]]}
        report(payload)
        write_result(f"generators{args.tag}", payload)
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runs, quality = [], []
    for seed in args.seeds:
        r, q = run_seed(seed, args)
        runs += r
        quality += q
        payload = {"args": vars(args), "machine": machine(), "command": "python " + " ".join(sys.argv),
                   "runs": runs, "quality": quality, "seconds": round(time.perf_counter() - started, 1)}
        write_result(f"generators{args.tag}", payload)  # after every seed: a stopped run keeps its seeds
    report(payload)


if __name__ == "__main__":
    main()
