"""Where do the transfer conv model's dark patches come from (issue 12, session 6)?

Seed 0 of the hard cohort (bench/cohort_utility.py's data): the transfer conv AD model's
reconstructions of its 6 training scans (decoded posterior means) against new scans drawn from
its aggregate-posterior Gaussian (what augment delivers, before near-copy redraws), from the
same Gaussian with its spread halved, and from a Gaussian with the spread of the posterior means
alone (plus a tenth of the mean posterior variance). Writes docs/figures/transfer_patches_seed0.png.

    OMP_NUM_THREADS=1 python bench/transfer_patches.py
"""
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)
from bench.cohort_utility import CONV, DIFFICULTY
from bench.downstream import build_data, plot_montage
from models.augment import AugmentConfig, fit_transfer_model
from models.config import ModelConfig
from models.data import PreprocessConfig


def main() -> None:
    pre = PreprocessConfig()
    with tempfile.TemporaryDirectory() as tmp:
        data = build_data(0, Path(tmp), 60, 6, 20, pre, difficulty=DIFFICULTY)
    cfg = ModelConfig(data_shape=(1, *pre.target_shape), **CONV.model_dump())
    config = AugmentConfig()
    model, *_ = fit_transfer_model(torch.cat([data["train_CN"], data["train_AD"]]), data["train_AD"], cfg,
                                   config, 0)
    model.eval()
    x = data["train_AD"]
    with torch.no_grad():
        loc, log_var = model.encode(x)
        recon = model.decode(loc).clamp(0, 1)
        g = torch.Generator().manual_seed(1)
        draws = model.sample(6, generator=g).clamp(0, 1)
        mean = model.sampling_loc
        u = torch.randn(6, model.latent_dim, generator=g)
        half = model.decode(mean + 0.5 * (u @ model.sampling_scale_tril.T)).clamp(0, 1)
        # the spread of the 6 posterior means alone (the law of total covariance without its mean
        # posterior variance; a tenth of that variance keeps the Gaussian full rank)
        centred = loc - loc.mean(0)
        between = centred.T @ centred / len(x) + 0.1 * torch.diag(log_var.exp().mean(0))
        means_only = model.decode(loc.mean(0) + u @ torch.linalg.cholesky(between).T).clamp(0, 1)
    figure = Path(__file__).resolve().parents[1] / "docs" / "figures" / "transfer_patches_seed0.png"
    plot_montage([("real AD train", x), ("recon (posterior means)", recon), ("aggregate draws", draws),
                  ("draws at scale 0.5", half), ("draws, spread of the means", means_only)], figure, per_row=4)
    print(f"wrote {figure}")


if __name__ == "__main__":
    main()
