"""A small CNN classifier and the checks built on it: what a synthetic scan is worth to a classifier.

One recipe everywhere (the augment report, the utility self-check, bench/): three conv blocks
(8, 16, 32 channels) + global average pool + linear, a fixed step budget, random flips along the
first spatial axis, and class-balanced mini-batches (half of each class, drawn with replacement
within it), so that a minority of a few scans is seen as often as the majority (``RECIPES``: bench/
also measures the class-weighted loss of its earlier experiments).

- ``two_sample_auroc``: a classifier two-sample test, real vs synthetic scans of one class,
  cross-validated: 0.5 means it cannot tell them apart; near 1, the synthetic scans carry a tell
  (blur, artefacts) that a downstream classifier could learn instead of the class.
- ``reference_share``: a classifier trained on the real train split, applied to the synthetic
  scans of a class: the share it assigns to that class.
- ``utility_check``: k-fold on the real train split, a classifier with and without the synthetic
  scans, scored on the held-out real fold: the difference in AUROC and balanced accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STEPS = 100
BATCH = 16
LR = 3e-3


class SmallCNN(nn.Module):
    """Three conv blocks (8, 16, 32 channels) + global average pool + linear (about 20k
    parameters in 3-D); ``spatial_dims`` 2 or 3; ``n_classes`` outputs."""

    def __init__(self, spatial_dims: int = 3, n_classes: int = 2, in_channels: int = 1):
        super().__init__()
        conv, norm, pool = ((nn.Conv3d, nn.InstanceNorm3d, nn.MaxPool3d) if spatial_dims == 3
                            else (nn.Conv2d, nn.InstanceNorm2d, nn.MaxPool2d))
        layers, c_in = [], in_channels
        for c in (8, 16, 32):
            layers += [conv(c_in, c, 3, padding=1), norm(c, affine=True), nn.LeakyReLU(0.1), pool(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(c_in, n_classes))
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=tuple(range(2, 2 + self.spatial_dims))))


def balanced_batch(y: Tensor, batch: int, g: torch.Generator) -> Tensor:
    """Indices of one mini-batch with an equal share of every class present (with replacement)."""
    classes = torch.unique(y)
    per = max(1, batch // len(classes))
    return torch.cat([m[torch.randint(len(m), (per,), generator=g)]
                      for m in (torch.nonzero(y == k).flatten() for k in classes)])


def uniform_batch(y: Tensor, batch: int, g: torch.Generator) -> Tensor:
    """Indices of one mini-batch drawn uniformly over the scans (with replacement)."""
    return torch.randint(len(y), (min(batch, len(y)),), generator=g)


# How a fit meets class imbalance (bench/ compares both):
# - "balanced" (the default since 2026-12-01): each mini-batch holds every class equally (drawn
#   with replacement within it), plain cross-entropy. With 6 AD in 66 scans a uniform batch of 16
#   holds 1.5 AD scans: the weighted recipe often ended 100 steps predicting one class (balanced
#   accuracy exactly 0.5 in 40 % of one benchmark's runs while its AUROC was 0.89);
# - "weighted" (bench/ experiments 4-12): uniform mini-batches, class-weighted cross-entropy.
RECIPES = ("balanced", "weighted")


def train_classifier(x: Tensor, y: Tensor, seed: int, steps: int = STEPS, batch: int = BATCH,
                     lr: float = LR, recipe: str = "balanced") -> SmallCNN:
    """Fit a SmallCNN on scans ``x`` (N, 1, *spatial) with labels ``y`` (N,) 0..K-1 by one of
    ``RECIPES``; returns it in eval mode."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, not {recipe!r}")
    balanced = recipe == "balanced"
    torch.manual_seed(seed)
    n_classes = int(y.max()) + 1
    net = SmallCNN(x.dim() - 2, max(n_classes, 2), x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = None if balanced else counts.sum() / (n_classes * counts.clamp(min=1))
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = balanced_batch(y, batch, g) if balanced else uniform_batch(y, batch, g)
        xb, yb = x[idx].float(), y[idx]
        flip = torch.rand(len(xb), generator=g) < 0.5
        xb = torch.where(flip.view(-1, *([1] * (xb.dim() - 1))), xb.flip(2), xb)
        loss = F.cross_entropy(net(xb), yb, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    return net


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, batch: int = 32) -> Tensor:
    """Class probabilities (N, K)."""
    return torch.cat([F.softmax(net(x[i:i + batch].float()), 1) for i in range(0, len(x), batch)])


def auroc(y: Sequence[int] | Tensor, score: Sequence[float] | Tensor) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN when one
    class is absent."""
    y, score = torch.as_tensor(y).bool(), torch.as_tensor(score, dtype=torch.float64)
    pos, neg = score[y], score[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def balanced_accuracy(y: Tensor, pred: Tensor) -> float:
    recalls = [float((pred[y == k] == k).double().mean()) for k in torch.unique(y)]
    return sum(recalls) / len(recalls)


def folds(n: int, k: int, seed: int) -> list[Tensor]:
    """``k`` disjoint index sets covering range(n), shuffled with ``seed``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[i::k] for i in range(k)]


def stratified_folds(y: Tensor, k: int, seed: int) -> list[Tensor]:
    """``folds`` within each class, so every fold holds each class (when it has k scans)."""
    parts = [[] for _ in range(k)]
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        for i, f in enumerate(folds(len(members), k, seed)):
            parts[i].append(members[f])
    return [torch.cat(p) for p in parts]


def two_sample_auroc(real: Tensor, synthetic: Tensor, seed: int = 0, k: int = 3, steps: int = STEPS) -> float | None:
    """Cross-validated AUROC of a classifier telling ``real`` from ``synthetic`` scans (None with
    fewer than two of either): 0.5 indistinguishable, 1.0 a perfect tell."""
    if min(len(real), len(synthetic)) < 2:
        return None
    x = torch.cat([real, synthetic]).float()
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(synthetic))]).long()
    k = max(2, min(k, len(real), len(synthetic)))
    scores, labels = [], []
    for i, held in enumerate(stratified_folds(y, k, seed)):
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        net = train_classifier(x[keep], y[keep], seed + i, steps)
        scores.append(predict(net, x[held])[:, 1])
        labels.append(y[held])
    return auroc(torch.cat(labels), torch.cat(scores))


def reference_share(x: Tensor, y: Tensor, synthetic: Tensor, label: int, seed: int = 0,
                    steps: int = STEPS) -> float | None:
    """Share of ``synthetic`` scans that a classifier trained on the real scans ``x`` (labels
    ``y``) assigns to class ``label`` (None without synthetic scans)."""
    if not len(synthetic) or len(torch.unique(y)) < 2:
        return None
    return share_called(train_classifier(x, y, seed, steps), synthetic, label)


def share_called(net: nn.Module, scans: Tensor, label: int) -> float:
    """Share of ``scans`` that ``net`` assigns to class ``label``."""
    return float((predict(net, scans).argmax(1) == label).double().mean())


@dataclass
class UtilityResult:
    """Per fold: AUROC and balanced accuracy on the held-out real fold, without and with the
    synthetic scans; the mean difference (with - without) and a t-interval over folds and seeds."""

    without: list[dict[str, float]]
    with_synthetic: list[dict[str, float]]
    auroc_diff: float
    auroc_interval: tuple[float, float]
    balanced_accuracy_diff: float
    balanced_accuracy_interval: tuple[float, float]

    @property
    def helped(self) -> bool | None:
        """True when the AUROC interval lies above 0, False when it lies below or straddles it
        with a negative mean; None when there is nothing to judge."""
        if math.isnan(self.auroc_diff):
            return None
        return self.auroc_interval[0] > 0

    def as_dict(self) -> dict:
        return {"auroc_diff": self.auroc_diff, "auroc_interval": list(self.auroc_interval),
                "balanced_accuracy_diff": self.balanced_accuracy_diff,
                "balanced_accuracy_interval": list(self.balanced_accuracy_interval),
                "folds": len(self.without), "without": self.without, "with_synthetic": self.with_synthetic,
                "helped": self.helped}


# two-sided 95 % Student t quantiles by degrees of freedom (scipy is not a dependency of models/)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 14: 2.145, 19: 2.093, 29: 2.045}


def _t95(df: int) -> float:
    if df <= 0:
        return float("nan")
    return _T95.get(df) or _T95[max(k for k in _T95 if k <= df)] if df < 30 else 1.96


def _interval(values: list[float]) -> tuple[float, tuple[float, float]]:
    n = len(values)
    if n == 0:
        return float("nan"), (float("nan"), float("nan"))
    mean = sum(values) / n
    if n == 1:
        return mean, (float("nan"), float("nan"))
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t95(n - 1) * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def utility_check(x: Tensor, y: Tensor, synthetic: Tensor, synthetic_label: int,
                  synthetic_sources: Sequence[Sequence[int]] | None = None, k: int = 5, seed: int = 0,
                  repeats: int = 1, steps: int = STEPS,
                  on_fold: Callable[[int, int], None] | None = None) -> UtilityResult:
    """k-fold on the real train split ``x`` / ``y`` (class ``synthetic_label`` the one the synthetic
    scans add to): per fold, a classifier on the other folds without and with ``synthetic``,
    scored on the held-out fold (AUROC of ``synthetic_label`` against the rest, balanced accuracy).
    ``synthetic_sources[i]``: the real rows synthetic scan i was derived from (a counterfactual's
    source subject, an interpolation's two ends); a synthetic scan is left out of a fold whose
    held-out rows include one of its sources, so no held-out subject is seen in training."""
    without, with_syn, d_auc, d_bal = [], [], [], []
    total, done = repeats * k, 0
    for r in range(repeats):
        for i, held in enumerate(stratified_folds(y, k, seed + 7919 * r)):
            keep = torch.ones(len(y), dtype=torch.bool)
            keep[held] = False
            held_set = set(held.tolist())
            usable = torch.tensor([not (synthetic_sources and held_set & set(synthetic_sources[j]))
                                   for j in range(len(synthetic))], dtype=torch.bool)
            x_syn = synthetic[usable] if len(synthetic) else synthetic
            fold_seed = seed + 101 * r + i
            scores = []
            for extra in (x_syn[:0], x_syn):
                xt = torch.cat([x[keep], extra]).float()
                yt = torch.cat([y[keep], torch.full((len(extra),), synthetic_label, dtype=torch.long)])
                p = predict(train_classifier(xt, yt, fold_seed, steps), x[held])
                y_held = y[held]
                target = (y_held == synthetic_label).long()
                scores.append({"auroc": auroc(target, p[:, synthetic_label]),
                               "balanced_accuracy": balanced_accuracy(y_held, p.argmax(1)),
                               "n_synthetic": len(extra)})
            without.append(scores[0])
            with_syn.append(scores[1])
            if not math.isnan(scores[0]["auroc"]) and not math.isnan(scores[1]["auroc"]):
                d_auc.append(scores[1]["auroc"] - scores[0]["auroc"])
            d_bal.append(scores[1]["balanced_accuracy"] - scores[0]["balanced_accuracy"])
            done += 1
            if on_fold is not None:
                on_fold(done, total)
    auc_mean, auc_ci = _interval(d_auc)
    bal_mean, bal_ci = _interval(d_bal)
    return UtilityResult(without, with_syn, auc_mean, auc_ci, bal_mean, bal_ci)
