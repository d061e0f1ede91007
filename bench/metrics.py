"""The measures bench/ reports, in one place: spread over seeds, a classifier's test scores,
random-feature KID, sharpness of scans, and nearest-neighbour distances."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from models.classifier import auroc, balanced_accuracy, predict

# what score() measures, in the order the tables print them
METRICS = ["balanced_accuracy", "ad_recall", "auroc"]


def mean_sd(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def score(net, x_test: torch.Tensor, y_test: torch.Tensor) -> dict[str, float]:
    """Balanced accuracy, AD (class 1) recall and AUROC on a held-out set, plus each test scan's
    probability of AD (for threshold analysis)."""
    p = predict(net, x_test)[:, 1]
    pred = (p >= 0.5).long()
    return {"balanced_accuracy": balanced_accuracy(y_test, pred),
            "ad_recall": float((pred[y_test == 1] == 1).double().mean()) if bool((y_test == 1).any()) else 0.0,
            "auroc": auroc(y_test, p),
            "p_ad": [round(float(v), 4) for v in p]}


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference per item."""
    return ((a - b) ** 2).flatten(1).mean(1).sqrt()


def real_nn(x: torch.Tensor) -> list[float]:
    """Real-to-real nearest-neighbour distances, as memorisation_audit computes them."""
    flat = x.flatten(1).double()
    d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    d.fill_diagonal_(float("inf"))
    return [float(v) for v in d.min(1).values]


# ----------------------------------------------------------------------------- sharpness

def gradient_magnitude(x: torch.Tensor) -> float:
    """Mean |grad x| per voxel, central differences over the interior, (N, 1, D, H, W)."""
    v = x[:, 0].double()
    gx = (v[:, 2:, 1:-1, 1:-1] - v[:, :-2, 1:-1, 1:-1]) / 2
    gy = (v[:, 1:-1, 2:, 1:-1] - v[:, 1:-1, :-2, 1:-1]) / 2
    gz = (v[:, 1:-1, 1:-1, 2:] - v[:, 1:-1, 1:-1, :-2]) / 2
    return float((gx**2 + gy**2 + gz**2).sqrt().mean())


def high_frequency_fraction(x: torch.Tensor) -> float:
    """Share of spectral energy (mean removed) at |k| > half the Nyquist frequency."""
    v = x[:, 0].double()
    power = torch.fft.fftn(v - v.mean(dim=(1, 2, 3), keepdim=True), dim=(1, 2, 3)).abs() ** 2
    axes = [torch.fft.fftfreq(n, dtype=torch.float64) for n in v.shape[1:]]
    k = torch.sqrt(sum(a**2 for a in torch.meshgrid(*axes, indexing="ij")))
    return float(power[:, k > 0.25].sum() / power.sum())


# ----------------------------------------------------------------------------- KID

class FeatureNet(nn.Module):
    """A fixed random CNN (seed 1234, never trained) whose globally pooled activations at three
    depths are the KID features (random-feature KID).

    No pretrained network may be downloaded, and an Inception net trained on photographs would
    not suit 8x8 digits or 32x32 brain slices anyway. A network trained on our own real data
    would make the metric depend on that training run and on the labels available (the demo
    cohort is 95% one class). Random convolutional features are fixed, reproducible from the
    seed, the same for every model compared, and sensitive to local texture and shape statistics
    at several scales; their absolute values mean nothing, only comparisons within one table do
    (the real-vs-real row gives the floor for the sample sizes used)."""

    def __init__(self, spatial_dims: int, width: int = 64, seed: int = 1234):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        gen = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList([conv(1, width, 3, padding=1), conv(width, width, 3, padding=1, stride=2),
                                     conv(width, width, 3, padding=1, stride=2)])
        with torch.no_grad():
            for block in self.blocks:
                fan_in = block.weight[0].numel()
                block.weight.copy_(torch.randn(block.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                block.bias.zero_()
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x * 2.0 - 1.0  # inputs live in [0, 1]
        for block in self.blocks:
            h = torch.relu(block(h))
            feats.append(h.flatten(2).mean(-1))
        return torch.cat(feats, 1)


def kid(real_f: torch.Tensor, fake_f: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al.
    2018), on all pairs of the two sets. Both sets are divided by one scalar, the real set's root
    mean square feature value, so that a.b / d is of order 1 (random features have no natural
    scale); per-feature standardisation is avoided because near-constant features would blow up."""
    scale = real_f.pow(2).mean().sqrt().clamp_min(1e-12)
    a, b = (real_f / scale).double(), (fake_f / scale).double()
    d = a.shape[1]
    kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())
