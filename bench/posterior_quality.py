"""Posterior quality, preconditioning and sample quality of plain vs MCMC-refined VAEs (issue #7).

Experiments 1-3 of issue #7 on one dataset per run:

1. held-out log p(x) (importance sampling, --particles particles from the encoder proposal and,
   where a chain exists, from the MCMC proposal) of a plain VAE, MALA with a fixed step, MALA
   with dual averaging, MALA with entropy adaptation, HMC with dual averaging and HMC with
   entropy adaptation, each on a one-layer VAE and 2- and 3-layer hierarchical VAEs; the mean
   acceptance and beta of every phase-2 epoch (from the training history) are kept and plotted;
2. preconditioning of entropy-adapted MALA on the hierarchical models: diag vs full vs lowrank,
   with log p(x) and the measured seconds per MCMC step (adaptation frozen, batch 64) next to
   one decoder forward+backward with respect to z;
3. sample quality: KID between held-out real items and model.sample() draws (see kid() and
   FeatureNet for the feature network, which is a fixed-seed random CNN: no pretrained weights).

Datasets: ``digits`` (scikit-learn 8x8, binarised, Bernoulli, MLP networks, as bench/likelihood.py),
``slices`` (demo cohort as 2-D axial PNG slices, 32x32 after preprocessing, Gaussian likelihood,
conv networks) and ``volumes`` (demo cohort 3-D 32^3, conv networks; costly on CPU).

    python bench/posterior_quality.py --dataset digits [--seeds 0 1 2] [--pretrain 10]
        [--epochs 10] [--particles 1000] [--latents 8 8,4 8,4,2]

Writes bench/results/posterior_quality_<dataset>.json and PNG plots
posterior_quality_<dataset>_{likelihood,traces,kid}.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cohorts import digits_split
from bench.common import RESULTS, machine, parse_args, timed, write_result
from bench.metrics import FeatureNet, kid
from models import (
    ModelConfig,
    SamplerConfig,
    TrainConfig,
    build_model,
    build_sampler,
    log_likelihood,
    train,
)
from models.samplers import evaluate

# Experiment 1: every method on every latent structure (diag preconditioner).
METHODS = {
    "plain VAE": SamplerConfig(kind="none"),
    "MALA fixed h=0.1": SamplerConfig(kind="mala", adaptation="fixed", step_size=0.1),
    "MALA dual averaging": SamplerConfig(kind="mala", adaptation="dual_averaging"),
    "MALA entropy (diag)": SamplerConfig(kind="mala", adaptation="entropy"),
    "HMC dual averaging (L=3)": SamplerConfig(kind="hmc", adaptation="dual_averaging", n_leapfrog=3),
    "HMC entropy (diag, L=3)": SamplerConfig(kind="hmc", adaptation="entropy", n_leapfrog=3),
}
# Experiment 2: preconditioners of entropy MALA, hierarchical models only (diag is in METHODS).
PRECOND = {
    "MALA entropy (full)": SamplerConfig(kind="mala", adaptation="entropy", preconditioner="full"),
    "MALA entropy (lowrank r=4)": SamplerConfig(kind="mala", adaptation="entropy", preconditioner="lowrank", rank=4),
}


# ------------------------------------------------------------------------------------ data
def digits_data(n_test: int | None):
    train, test = digits_split()
    return train, test[:n_test] if n_test else test


def cohort_data(kind: str, n_items: int, n_test: int, size: int):
    from models.data import PreprocessConfig, load_tensors, make_demo_cohort, make_demo_slices

    n_ad = max(1, n_items // 20)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "slices":
            cohort = make_demo_slices(tmp, n_control=n_items - n_ad, n_ad=n_ad, shape=(2 * size, 2 * size), seed=0)
            pre = PreprocessConfig(spatial_dims=2, target_shape=(size, size))
        else:
            cohort = make_demo_cohort(tmp, n_control=n_items - n_ad, n_ad=n_ad, shape=(size,) * 3, seed=0)
            pre = PreprocessConfig(spatial_dims=3, target_shape=(size,) * 3)
        x = load_tensors(cohort, pre)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order[n_test:]], x[order[:n_test]]


def model_config(dataset: str, shape, latent_dims: list[int]) -> ModelConfig:
    if dataset == "digits":
        return ModelConfig(data_shape=shape, arch="mlp", latent_dims=latent_dims, likelihood="bernoulli", hidden=(128,))
    return ModelConfig(data_shape=shape, arch="conv", latent_dims=latent_dims, likelihood="gaussian",
                       channels=(16, 32, 64), hidden=(128,))


def synthetic(model, n: int, seed: int, bernoulli: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5000 + seed)
    mean = model.sample(n, generator=gen).clamp(0, 1)
    # Bernoulli models: the real digits are binary, so compare binary draws, not probabilities.
    return torch.bernoulli(mean, generator=gen) if bernoulli else mean


# ---------------------------------------------------------------------------- cost per step
def step_seconds(model, sampler, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of one MCMC step (adaptation frozen) and of one decoder fwd+bwd wrt z."""
    model.eval()
    sampler.eval()
    z = model.rsample(x)[0].detach()
    log_prob = lambda u: model.log_joint(x, u)
    base = statistics.median(timed(lambda: evaluate(log_prob, z), repeats))
    state = {"z": z, "chain": None}

    def one():
        with torch.no_grad():
            zn, info = sampler.step(state["z"], log_prob, state["chain"])
        state["z"], state["chain"] = zn.detach(), info.state

    return statistics.median(timed(one, repeats)), base


# ------------------------------------------------------------------------------------ plots
def plot(dataset: str, rows: list[dict], traces: dict, latents: list[str], where: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for key, label, fname in (("ll", "held-out log p(x), nats (higher is better)", "likelihood"),
                              ("kid", "KID x 1e3, random-feature CNN (lower is better)", "kid")):
        methods = list(dict.fromkeys(r["method"] for r in rows))
        fig, ax = plt.subplots(figsize=(11, 4.5))
        width = 0.8 / len(latents)
        for j, lat in enumerate(latents):
            xs, ys, es = [], [], []
            for i, m in enumerate(methods):
                r = next((r for r in rows if r["method"] == m and r["latents"] == lat), None)
                if r is None:
                    continue
                scale = 1e3 if key == "kid" else 1.0
                xs.append(i + (j - (len(latents) - 1) / 2) * width)
                ys.append(r[f"{key}_mean"] * scale)
                es.append(r[f"{key}_sd"] * scale)
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=f"latents [{lat}]")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(label)
        if key == "ll":
            lo = min(r["ll_mean"] for r in rows)
            hi = max(r["ll_mean"] for r in rows)
            pad = 0.15 * (hi - lo + 1e-6)
            ax.set_ylim(lo - 2 * pad, hi + pad)
        ax.set_title(f"{dataset}: {label.split(',')[0]} by method (mean ± sd over seeds)\n{where}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = RESULTS / f"posterior_quality_{dataset}_{fname}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)

    fig, axes = plt.subplots(2, len(latents), figsize=(4.2 * len(latents), 6.5), squeeze=False)
    for j, lat in enumerate(latents):
        for name, hist in traces.get(lat, {}).items():
            phase2 = [h for h in hist if h.get("phase") == 2]
            if not phase2:
                continue
            ep = [h["epoch"] for h in phase2]
            axes[0, j].plot(ep, [h.get("accept", float("nan")) for h in phase2], label=name)
            axes[1, j].plot(ep, [h.get("beta", float("nan")) for h in phase2], label=name)
        axes[0, j].set_title(f"latents [{lat}]: mean acceptance", fontsize=9)
        axes[1, j].set_title(f"latents [{lat}]: beta", fontsize=9)
        axes[1, j].set_yscale("log")
        axes[1, j].set_xlabel("epoch (phase 2)")
    axes[0, -1].legend(fontsize=6)  # the last panel has every method (hierarchical: + preconditioners)
    fig.suptitle(f"{dataset}: per-epoch acceptance and beta (seed {traces.get('_seed')}); {where}", fontsize=9)
    fig.tight_layout()
    path = RESULTS / f"posterior_quality_{dataset}_traces.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    return out


# ------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "slices", "volumes"], default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--latents", nargs="+", default=["8", "8,4", "8,4,2"])
    parser.add_argument("--items", type=int, default=400, help="demo cohort size (slices/volumes)")
    parser.add_argument("--test", type=int, default=80, help="held-out items (digits: all 397 if 0)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train-items", type=int, default=None, help="the first N training items (default all)")
    parser.add_argument("--repeats", type=int, default=10, help="timing repeats per cost figure")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=None, help="subset of method names")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNGs from the JSON of a past run")
    args = parse_args(parser, {"seeds": [0], "pretrain": 1, "epochs": 1, "particles": 8, "latents": ["4", "4,2"],
                               "train_items": 128, "items": 40, "test": 20, "size": 16, "repeats": 1})
    if args.replot:
        import json

        past = json.loads((RESULTS / f"posterior_quality_{args.dataset}.json").read_text())
        latents = list(dict.fromkeys(r["latents"] for r in past["rows"]))
        traces = {**past["traces"], "_seed": past["trace_seed"]}
        print("\n".join(str(p) for p in plot(args.dataset, past["rows"], traces, latents, past["machine"])))
        return
    torch.set_num_threads(args.threads)
    started_all = time.perf_counter()

    if args.dataset == "digits":
        train_x, test_x = digits_data(args.test or None)
    else:
        train_x, test_x = cohort_data(args.dataset, args.items, args.test, args.size)
    train_x = train_x[: args.train_items]
    shape = tuple(train_x.shape[1:])
    print(f"{args.dataset}: train {tuple(train_x.shape)}, held out {tuple(test_x.shape)}", flush=True)
    feature_net = FeatureNet(len(shape) - 1)
    real_f = feature_net(test_x)
    # KID floor: held-out real vs the same number of training items.
    floor = kid(real_f, feature_net(train_x[: len(test_x)]))

    latents = args.latents
    rows, traces = [], {"_seed": args.seeds[0]}
    cost_x = train_x[:64]
    for lat in latents:
        latent_dims = [int(v) for v in lat.split(",")]
        methods = dict(METHODS)
        if len(latent_dims) > 1:
            methods.update(PRECOND)
        if args.methods:
            methods = {k: v for k, v in methods.items() if k in args.methods}
        traces[lat] = {}
        for name, scfg in methods.items():
            enc_ll, mcmc_ll, kids, secs, accepts, betas, step_s, base_s = [], [], [], [], [], [], [], []
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = build_model(model_config(args.dataset, shape, latent_dims))
                sampler = build_sampler(scfg, model.latent_dim)
                t0 = time.perf_counter()
                hist = train(model, sampler, train_x, TrainConfig(pretrain_epochs=args.pretrain, epochs=args.epochs,
                                                                  batch_size=64, seed=seed))
                secs.append(time.perf_counter() - t0)
                records = hist.as_dicts()
                if seed == args.seeds[0] and scfg.kind != "none":
                    traces[lat][name] = records
                last = [r for r in records if r.get("phase") == 2]
                if last and "accept" in last[-1]:
                    accepts.append(last[-1]["accept"])
                    betas.append(last[-1].get("beta", float("nan")))
                gen = torch.Generator().manual_seed(1000 + seed)
                enc_ll.append(float(log_likelihood(model, test_x, args.particles, generator=gen).mean()))
                if scfg.kind != "none":
                    mcmc_ll.append(float(log_likelihood(model, test_x, args.particles, "mcmc", sampler,
                                                        generator=gen).mean()))
                kids.append(kid(real_f, feature_net(synthetic(model, len(test_x), seed, args.dataset == "digits"))))
                if seed == args.seeds[0] and scfg.kind != "none" and (len(latent_dims) > 1 or name in PRECOND
                                                                      or "entropy (diag)" in name):
                    s, b = step_seconds(model, sampler, cost_x, args.repeats)
                    step_s.append(s)
                    base_s.append(b)

            def sd(v):
                return statistics.stdev(v) if len(v) > 1 else 0.0

            row = {
                "latents": lat, "method": name, "sampler": scfg.model_dump(),
                "ll_mean": statistics.mean(enc_ll), "ll_sd": sd(enc_ll), "ll_per_seed": enc_ll,
                "ll_mcmc_mean": statistics.mean(mcmc_ll) if mcmc_ll else None,
                "kid_mean": statistics.mean(kids), "kid_sd": sd(kids), "kid_per_seed": kids,
                "final_accept": statistics.mean(accepts) if accepts else None,
                "final_beta": statistics.mean(betas) if betas else None,
                "train_seconds": statistics.mean(secs),
                "step_seconds": step_s[0] if step_s else None,
                "decoder_fwd_bwd_seconds": base_s[0] if base_s else None,
            }
            rows.append(row)
            print(f"[{lat:6s}] {name:28s} logp {row['ll_mean']:9.2f} ± {row['ll_sd']:.2f}"
                  + (f" (mcmc {row['ll_mcmc_mean']:9.2f})" if mcmc_ll else " " * 16)
                  + f"  KIDx1e3 {1e3 * row['kid_mean']:7.2f} ± {1e3 * row['kid_sd']:.2f}"
                  + (f"  acc {row['final_accept']:.2f} beta {row['final_beta']:.3g}" if accepts else "")
                  + f"  train {row['train_seconds']:.1f}s"
                  + (f"  step {1e3 * row['step_seconds']:.2f}ms" if step_s else ""), flush=True)

    where = machine("cpu")
    total = time.perf_counter() - started_all
    print()
    print(f"posterior quality, {args.dataset}; {len(args.seeds)} seed(s) {args.seeds}, {args.pretrain}+{args.epochs} "
          f"epochs, {args.particles} particles, {len(test_x)} held-out items; {where}; total {total:.0f} s")
    print(f"KID floor (held-out real vs {len(test_x)} training items): {1e3 * floor:.2f} x 1e-3")
    print()
    print("| latents | method | log p(x), encoder proposal | MCMC proposal | KID x 1e3 | final accept | final beta | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["method"] in PRECOND:
            continue
        print(f"| [{r['latents']}] | {r['method']} | {r['ll_mean']:.2f} ± {r['ll_sd']:.2f} | "
              + (f"{r['ll_mcmc_mean']:.2f}" if r["ll_mcmc_mean"] is not None else "") + " | "
              + f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_sd']:.2f} | "
              + (f"{r['final_accept']:.2f} | {r['final_beta']:.3g}" if r["final_accept"] is not None else " | ")
              + f" | {r['train_seconds']:.1f} |")
    print()
    print("preconditioning (entropy MALA, hierarchical models); step = one MCMC step at batch 64, "
          "adaptation frozen, median of", args.repeats)
    print("| latents | preconditioner | log p(x) | KID x 1e3 | s per step | ratio to decoder fwd+bwd | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["latents"] == latents[0] or not (r["method"].startswith("MALA entropy")):
            continue
        if r["step_seconds"] is None:
            continue
        print(f"| [{r['latents']}] | {r['method']} | {r['ll_mean']:.2f} ± {r['ll_sd']:.2f} | "
              f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_sd']:.2f} | {r['step_seconds']:.5f} | "
              f"{r['step_seconds'] / r['decoder_fwd_bwd_seconds']:.2f} | {r['train_seconds']:.1f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    pngs = plot(args.dataset, rows, traces, latents, where)
    out = write_result(f"posterior_quality_{args.dataset}", {
        "machine": where, "command": " ".join(sys.argv), "seeds": args.seeds, "pretrain_epochs": args.pretrain,
        "epochs": args.epochs, "particles": args.particles, "train_items": len(train_x), "test_items": len(test_x),
        "kid_floor_real_vs_real": floor, "kid_features": "fixed random CNN (seed 1234), 3 depths, pooled",
        "total_seconds": total, "rows": rows,
        "traces": {k: v for k, v in traces.items() if k != "_seed"}, "trace_seed": args.seeds[0],
    })
    print(f"wrote {out}; " + ", ".join(str(p) for p in pngs))


if __name__ == "__main__":
    main()
