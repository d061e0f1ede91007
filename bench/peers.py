"""Experiment 7: mcvae against the VAEs a lab would otherwise pick, on the same data and budget.

Per seed, the demo cohort of bench/downstream.py (60 CN + 6 AD for training, a held-out
balanced 20 + 20 real test set, 32^3, default preprocessing). Each generator learns the 6 real
AD scans with the same budget, 750 Adam steps (lr 2e-3) on batches of all 6 scans:

  plain-VAE    mcvae without MCMC (sampler "none"): 600 + 150 plain-ELBO steps
  MCMC-VAE     mcvae default (`mcvae augment`): 600 plain-ELBO + 150 MALA-refined steps
  pythae-VAE   pythae.models.VAE (registry package pythae 0.1.2) with its default MLP
               encoder/decoder, latent 16, reconstruction_loss="bce" (for data in [0, 1]; its
               "mse" is a unit-variance Gaussian whose KL term would swamp 32^3 voxels' worth of fit)
  MONAI-VAE    monai.networks.nets.VarAutoEncoder (3-D, channels 8/16/32, strides 2, latent 16),
               BCE + KL loss as in MONAI's VAE tutorial

Every generator writes 5x the minority count (30 scans) as decoder means, twice: latents from
the prior N(0, I) ("prior"), and from the Gaussian moment-matched to the aggregate posterior of
the 6 training scans ("aggregate", mcvae's default sampling), so the sampling choice and the
model are separated.
Figures per generator:
- held-out log-likelihood of the 20 test AD scans, nats per scan, by importance sampling
  (models.evaluation.log_likelihood, encoder proposal in a defensive mixture) under ONE common
  observation model for all four: Gaussian around the decoder mean with a global variance set
  to each model's mean squared reconstruction error on its training scans (the variance's
  maximum-likelihood value there). pythae and MONAI VAEs define no Gaussian variance of their
  own, so this makes the likelihoods comparable; mcvae's own learned variance is not used here.
- KID between the 20 held-out real AD scans and the 30 synthetic scans (random-feature KID of
  bench/metrics.py), with the real-vs-real floor (6 training vs 20 test AD scans);
- diversity: mean pairwise RMS distance between the synthetic scans (real AD: the same between
  real scans); nearest-real-training-scan distance and flagged copies (memorisation audit);
- downstream utility: the classifier of models/classifier.py ("weighted" recipe) on real + 1x and + 5x
  synthetic AD scans: balanced accuracy, AD recall, AUROC on the balanced test set.

    python bench/peers.py                 # seeds 0 1 2
    python bench/peers.py --seeds 0 --particles 100 --steps-scale 0.2    # quick look
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohorts import build_data, held_out, labelled
from bench.common import RESULTS, machine, parse_args, write_result
from bench.metrics import FeatureNet, kid, mean_sd, score
from bench.plots import plot_montage
from models.augment import AugmentConfig
from models.classifier import train_classifier
from models.config import ModelConfig, SamplerConfig
from models.data import PreprocessConfig
from models.evaluation import log_likelihood
from models.fitting import fit_class_model
from models.report import memorisation_audit

SOURCES = ["plain-VAE", "MCMC-VAE", "pythae-VAE", "MONAI-VAE"]
LATENTS = ["prior", "aggregate"]  # where each generator's latents come from
VARIANTS = [f"{s} {lat}" for s in SOURCES for lat in LATENTS]
LATENT = 16
LR = 2e-3


# ------------------------------------------------------------------ one observation model for all
class GaussianView(nn.Module):
    """Any encoder/decoder pair seen as a VAE with prior N(0, I), Gaussian q and a Gaussian
    likelihood of global variance sigma^2 around the decoder mean: the interface that
    models.evaluation.log_likelihood needs (encode, rsample, log_q, log_joint)."""

    def __init__(self, encode, decode, log_var_obs: float, latent_dim: int):
        super().__init__()
        self._encode, self._decode = encode, decode
        self.log_var_obs, self.latent_dim = log_var_obs, latent_dim

    def encode(self, x):
        return self._encode(x)

    def rsample(self, x, n: int = 1, generator=None):
        mu, logvar = self.encode(x)
        mu, std = mu.repeat(n, 1), (0.5 * logvar).exp().repeat(n, 1)
        u = mu + std * torch.randn(mu.shape, generator=generator, device=mu.device)
        return u, self.log_q(x, u)

    def log_q(self, x, u):
        mu, logvar = self.encode(x)
        reps = u.shape[0] // mu.shape[0]
        mu, logvar = mu.repeat(reps, 1), logvar.repeat(reps, 1)
        return (-0.5 * ((u - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi))).sum(-1)

    def log_joint(self, x, u):
        prior = (-0.5 * (u.pow(2) + math.log(2 * math.pi))).sum(-1)
        reps = u.shape[0] // x.shape[0]
        x = x.repeat(reps, *([1] * (x.dim() - 1)))
        mean = self._decode(u)
        resid = (x - mean).flatten(1)
        lik = -0.5 * (resid.pow(2).sum(-1) / math.exp(self.log_var_obs)
                      + resid.shape[1] * (self.log_var_obs + math.log(2 * math.pi)))
        return prior + lik


class Generator:
    """A trained generator: encoder (mu, logvar), decoder mean, and its training cost."""

    def __init__(self, encode, decode, seconds: float, extra: dict | None = None):
        self.encode, self.decode, self.seconds, self.extra = encode, decode, seconds, extra or {}

    @torch.no_grad()
    def sample(self, n: int, seed: int, aggregate_of: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder means of N(0, I) latents, or (aggregate_of: the training scans) of latents from
        the Gaussian moment-matched to their aggregate posterior, as mcvae's sampling="aggregate"
        fits it (16 posterior draws per scan)."""
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(n, LATENT, generator=g)
        if aggregate_of is None:
            return self.decode(eps).clamp(0, 1)
        mu, logvar = self.encode(aggregate_of)
        u = (mu.repeat(16, 1) + (0.5 * logvar).exp().repeat(16, 1) * torch.randn(16 * len(mu), LATENT, generator=g))
        u = u.double()
        cov = torch.cov(u.T, correction=0) + 1e-6 * torch.eye(LATENT, dtype=torch.float64)
        z = u.mean(0) + eps.double() @ torch.linalg.cholesky(cov).T
        return self.decode(z.float()).clamp(0, 1)

    @torch.no_grad()
    def gaussian_view(self, x_train: torch.Tensor) -> GaussianView:
        mu, _ = self.encode(x_train)
        mse = float((self.decode(mu) - x_train).pow(2).mean())
        return GaussianView(self.encode, self.decode, math.log(mse), LATENT)


# ------------------------------------------------------------------ the four generators
def train_mcvae(x: torch.Tensor, sampler: SamplerConfig, steps_scale: float, seed: int) -> Generator:
    base = AugmentConfig()
    cfg = AugmentConfig(sampler=sampler, pretrain_steps=round(base.pretrain_steps * steps_scale),
                        mcmc_steps=round(base.mcmc_steps * steps_scale))
    model_cfg = ModelConfig(data_shape=tuple(x.shape[1:]), **cfg.model.model_dump())
    t = time.perf_counter()
    model, _, history, _ = fit_class_model(x, model_cfg, cfg, seed)
    model.eval()
    last = history.records[-1]
    return Generator(lambda v: model.encode(v), model.decode, time.perf_counter() - t,
                     {"final_accept": last.accept})


def _adam_loop(net: nn.Module, loss_fn, x: torch.Tensor, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    t = time.perf_counter()
    net.train()
    for _ in range(steps):
        loss = loss_fn(x)  # the whole 6-scan class per step, as mcvae's batch of min(8, n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    return time.perf_counter() - t


def train_pythae(x: torch.Tensor, steps: int, seed: int) -> Generator:
    from pythae.models import VAE, VAEConfig

    torch.manual_seed(seed)
    vae = VAE(VAEConfig(input_dim=tuple(x.shape[1:]), latent_dim=LATENT, reconstruction_loss="bce"))
    seconds = _adam_loop(vae, lambda v: vae({"data": v}).loss, x, steps, seed)

    def encode(v):
        out = vae.encoder(v)
        return out["embedding"], out["log_covariance"]

    return Generator(encode, lambda z: vae.decoder(z)["reconstruction"], seconds)


def train_monai(x: torch.Tensor, steps: int, seed: int) -> Generator:
    from monai.networks.nets import VarAutoEncoder

    torch.manual_seed(seed)
    vae = VarAutoEncoder(spatial_dims=3, in_shape=tuple(x.shape[1:]), out_channels=1, latent_size=LATENT,
                         channels=(8, 16, 32), strides=(2, 2, 2))

    def loss(v):
        recon, mu, logvar, _ = vae(v)
        bce = F.binary_cross_entropy(recon, v, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (bce + kld) / len(v)

    seconds = _adam_loop(vae, loss, x, steps, seed)
    return Generator(lambda v: vae.encode_forward(v), lambda z: vae.decode_forward(z, True), seconds)


def train_source(name: str, x: torch.Tensor, steps_scale: float, seed: int) -> Generator:
    steps = round(750 * steps_scale)
    if name == "plain-VAE":
        return train_mcvae(x, SamplerConfig(kind="none"), steps_scale, seed)
    if name == "MCMC-VAE":
        return train_mcvae(x, AugmentConfig().sampler, steps_scale, seed)
    if name == "pythae-VAE":
        return train_pythae(x, steps, seed)
    return train_monai(x, steps, seed)


# ------------------------------------------------------------------ metrics
def pairwise_rms(x: torch.Tensor) -> float:
    f = x.flatten(1).double()
    d = torch.cdist(f, f) / math.sqrt(f.shape[1])
    return float(d.sum() / (len(f) * (len(f) - 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--steps-scale", type=float, default=1.0, help="scale every generator's 750-step budget")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--threads", type=int, default=2)
    args = parse_args(ap, {"seeds": [0], "particles": 8, "steps_scale": 0.01, "counts": [1], "threads": 1})
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pre = PreprocessConfig()
    # training cohort (CN, AD), held-out scans per class, the downstream classifier's steps
    n_cn, n_ad, n_test, clf_steps = (4, 2, 2, 2) if args.quick else (60, 6, 20, 100)
    n_max = n_ad * max(args.counts)
    steps = round(750 * args.steps_scale)
    features = FeatureNet(spatial_dims=3)
    rows, runs, montage, montage_seed = [], [], None, None

    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
            data = build_data(seed, Path(tmp), n_cn, n_ad, n_test, pre)
        x_cn, x_ad, test_ad = data["train_CN"], data["train_AD"], data["test_AD"]
        x_test, y_test = held_out(data)
        f_test = features(test_ad)
        floor = kid(f_test, features(x_ad))
        gen_seed = seed * 1009
        synthetic = {}
        for name in SOURCES:
            gen = train_source(name, x_ad, args.steps_scale, gen_seed)
            view = gen.gaussian_view(x_ad)
            ll = float(log_likelihood(view, test_ad, n_particles=args.particles, chunk=50,
                                      generator=torch.Generator().manual_seed(seed)).mean())
            for latents in LATENTS:
                variant = f"{name} {latents}"
                scans = gen.sample(n_max, seed=gen_seed + 1, aggregate_of=x_ad if latents == "aggregate" else None)
                synthetic[variant] = scans
                audit = memorisation_audit(x_ad, scans)
                row = {"seed": seed, "source": variant, "train_seconds": round(gen.seconds, 1),
                       "test_log_likelihood": ll, "obs_sigma": math.exp(0.5 * view.log_var_obs),
                       "kid": kid(f_test, features(scans)), "kid_real_floor": floor,
                       "spread": pairwise_rms(scans), "real_spread": pairwise_rms(x_ad),
                       "nn_to_real_median": audit["synthetic_to_real_nn"]["median"],
                       "flagged": len(audit["flagged"]), **gen.extra}
                rows.append(row)
                print(f"seed {seed}: {variant:20s} {row['train_seconds']:6.1f}s  LL {ll:10.1f}  "
                      f"KID {row['kid']:.4f} (floor {floor:.4f})  spread {row['spread']:.4f} "
                      f"(real {row['real_spread']:.4f})  flagged {row['flagged']}", flush=True)
                for c in args.counts:
                    extra = scans[: c * n_ad]
                    x, y = labelled(x_cn, torch.cat([x_ad, extra]))
                    s = score(train_classifier(x, y, seed, clf_steps, 16, 3e-3, "weighted"), x_test, y_test)
                    runs.append({"seed": seed, "source": variant, "count": c, **s})
                    print(f"seed {seed}: {variant:20s} {c}x  bal.acc {s['balanced_accuracy']:.3f}  "
                          f"AD recall {s['ad_recall']:.3f}  AUROC {s['auroc']:.3f}", flush=True)
        if montage is None:
            montage, montage_seed = [("real AD (training)", x_ad)] + [(v, synthetic[v]) for v in VARIANTS], seed

    summary = {}
    for name in VARIANTS:
        mine = [r for r in rows if r["source"] == name]
        summary[name] = {k: mean_sd([r[k] for r in mine]) for k in
                         ("train_seconds", "test_log_likelihood", "kid", "spread", "nn_to_real_median", "flagged")}
        for c in args.counts:
            summary[name][f"{c}x"] = {m: mean_sd([r[m] for r in runs if r["source"] == name and r["count"] == c])
                                      for m in ("balanced_accuracy", "ad_recall", "auroc")}
    floor = mean_sd([r["kid_real_floor"] for r in rows if r["source"] == VARIANTS[0]])
    real_spread = mean_sd([r["real_spread"] for r in rows if r["source"] == VARIANTS[0]])
    elapsed = time.perf_counter() - started
    mach = machine()

    def ms(d, f="{:.3f}"):
        return f"{f.format(d['mean'])} ± {f.format(d['sd'])}"

    print(f"\nPeers on the demo cohort (6 AD scans, 32^3), seeds {args.seeds}, {steps} steps each, "
          f"{args.particles} particles; {mach}; {elapsed / 60:.1f} min")
    print("| generator | train s | test log-lik (nats/scan) | KID | spread | NN to real | flagged |")
    print("|---|---|---|---|---|---|---|")
    for name in VARIANTS:
        s = summary[name]
        print(f"| {name} | {ms(s['train_seconds'], '{:.0f}')} | {ms(s['test_log_likelihood'], '{:.0f}')} | "
              f"{ms(s['kid'], '{:.4f}')} | {ms(s['spread'], '{:.4f}')} | {ms(s['nn_to_real_median'], '{:.4f}')} | "
              f"{ms(s['flagged'], '{:.1f}')} |")
    print(f"| real AD | | | floor {ms(floor, '{:.4f}')} | {ms(real_spread, '{:.4f}')} | | |")
    print("\n| generator | count | balanced accuracy | AD recall | AUROC |")
    print("|---|---|---|---|---|")
    for name in VARIANTS:
        for c in args.counts:
            s = summary[name][f"{c}x"]
            print(f"| {name} | {c}x | {ms(s['balanced_accuracy'])} | {ms(s['ad_recall'])} | {ms(s['auroc'])} |")

    RESULTS.mkdir(parents=True, exist_ok=True)
    _plot(summary, args.counts, floor, real_spread, RESULTS / "peers.png", mach)
    if montage:
        plot_montage(montage, RESULTS / "peers_montage.png", montage_seed)
    out = write_result("peers", {"machine": mach, "command": "python " + " ".join(sys.argv), "args": vars(args),
                                 "steps": steps, "seconds": round(elapsed, 1), "summary": summary,
                                 "kid_real_floor": floor, "real_spread": real_spread, "rows": rows, "runs": runs})
    print(f"wrote {out}, peers.png and peers_montage.png")


def _plot(summary: dict, counts: list[int], floor: dict, real_spread: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    panels = [("test log-likelihood (nats/scan)", lambda s: s["test_log_likelihood"], None),
              ("KID (lower is better)", lambda s: s["kid"], floor),
              ("spread of synthetic scans (RMS)", lambda s: s["spread"], real_spread)]
    panels += [(f"balanced accuracy, +{c}x synthetic", lambda s, c=c: s[f"{c}x"]["balanced_accuracy"], None)
               for c in counts]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0))
    for ax, (label, get, ref) in zip(axes, panels):
        vals = [get(summary[n]) for n in names]
        colours = {"plain-VAE": "#1f77b4", "MCMC-VAE": "#d62728", "pythae-VAE": "#9467bd", "MONAI-VAE": "#2ca02c"}
        ax.bar(range(len(names)), [v["mean"] for v in vals], yerr=[v["sd"] for v in vals], capsize=3,
               color=[colours[n.rsplit(" ", 1)[0]] for n in names],
               alpha=1.0, hatch=None, edgecolor="k", linewidth=0.3)
        for patch, n in zip(ax.patches, names):
            patch.set_alpha(0.45 if n.endswith("prior") else 1.0)
        if ref is not None:
            ax.axhline(ref["mean"], ls="--", c="k", lw=1, label="real")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=6)
        ax.set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
