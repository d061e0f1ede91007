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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STEPS = 100
BATCH = 16
LR = 3e-3


class SmallCNN(nn.Module):
    """Three conv blocks (8, 16, 32 channels) + global average pool + linear (about 20k
    parameters in 3-D); ``spatial_dims`` 2 or 3; ``n_classes`` outputs. Its initial weights and
    its dropout draw from ``generator`` (default: a fresh one seeded 0), never from torch's global
    generator: the report trains these beside a model fitting on another thread, and neither may
    move the other's random numbers (``models.checks``)."""

    def __init__(self, spatial_dims: int = 3, n_classes: int = 2, in_channels: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        conv, norm, pool = ((nn.Conv3d, nn.InstanceNorm3d, nn.MaxPool3d) if spatial_dims == 3
                            else (nn.Conv2d, nn.InstanceNorm2d, nn.MaxPool2d))
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.device("meta"):  # shapes only: the weights are drawn below, from the generator
            layers, c_in = [], in_channels
            for c in (8, 16, 32):
                layers += [conv(c_in, c, 3, padding=1), norm(c, affine=True), nn.LeakyReLU(0.1), pool(2)]
                c_in = c
            self.features = nn.Sequential(*layers)
            self.linear = nn.Linear(c_in, n_classes)
        self.to_empty(device="cpu")
        self._initialise()
        self.dropout = 0.2
        self.spatial_dims = spatial_dims

    @torch.no_grad()
    def _initialise(self) -> None:
        """torch's default initialisation (kaiming-uniform weights with a = sqrt(5), biases uniform
        in +-1/sqrt(fan_in); norms at 1 and 0), drawn from ``self.generator``."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=self.generator)
                bound = 1 / math.sqrt(module.weight[0].numel())
                nn.init.uniform_(module.bias, -bound, bound, generator=self.generator)
            elif isinstance(module, (nn.InstanceNorm2d, nn.InstanceNorm3d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x).mean(dim=tuple(range(2, 2 + self.spatial_dims)))
        if self.training and self.dropout:  # dropout from the net's own generator
            keep = torch.rand(h.shape, generator=self.generator, device=h.device) >= self.dropout
            h = h * keep / (1 - self.dropout)
        return self.linear(h)


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
    ``RECIPES``; returns it in eval mode. Every random draw comes from generators seeded by
    ``seed`` (none from torch's global one), so it is safe beside other work on another thread."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, not {recipe!r}")
    balanced = recipe == "balanced"
    n_classes = int(y.max()) + 1
    net = SmallCNN(x.dim() - 2, max(n_classes, 2), x.shape[1], torch.Generator().manual_seed(seed))
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


# How a check trains its independent classifiers (folds): ``map`` one after the other, or a
# ``models.checks.ClassifierPool``'s ``map``, side by side on threads of their own. Results come
# back in order either way.
Mapper = Callable[[Callable, Sequence], Iterable]


def two_sample_auroc(real: Tensor, synthetic: Tensor, seed: int = 0, k: int = 3, steps: int = STEPS,
                     map_fn: Mapper = map) -> float | None:
    """Cross-validated AUROC of a classifier telling ``real`` from ``synthetic`` scans (None with
    fewer than two of either): 0.5 indistinguishable, 1.0 a perfect tell."""
    if min(len(real), len(synthetic)) < 2:
        return None
    x = torch.cat([real, synthetic]).float()
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(synthetic))]).long()
    k = max(2, min(k, len(real), len(synthetic)))

    def held_out_scores(fold: tuple[int, Tensor]) -> Tensor:
        i, held = fold
        keep = _kept(len(y), held)
        net = train_classifier(x[keep], y[keep], seed + i, steps)
        return predict(net, x[held])[:, 1]

    folds = list(enumerate(stratified_folds(y, k, seed)))
    scores = list(map_fn(held_out_scores, folds))
    return auroc(torch.cat([y[held] for _, held in folds]), torch.cat(scores))


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


@dataclass
class Fold:
    """One fold of the utility check: the held-out rows of the real train split, the seed of its
    classifiers, and (once trained) the held-out class probabilities of the classifier that saw
    no synthetic scan."""

    held: Tensor
    seed: int
    without: Tensor | None = None


def utility_folds(y: Tensor, k: int = 5, seed: int = 0, repeats: int = 1) -> list[Fold]:
    """The utility check's folds: ``repeats`` x ``k`` stratified folds of the labels ``y``."""
    return [Fold(held, seed + 101 * r + i) for r in range(repeats)
            for i, held in enumerate(stratified_folds(y, k, seed + 7919 * r))]


def _kept(n: int, held: Tensor) -> Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return keep


def train_without(x: Tensor, y: Tensor, folds: Sequence[Fold], steps: int = STEPS,
                  should_stop: Callable[[], bool] | None = None, map_fn: Mapper = map) -> None:
    """The utility check's arm without synthetic scans, per fold (``fold.without``): it needs no
    synthetic scan, so the report trains it while the generative model is still fitting. A fold
    trained already is left as it is; once ``should_stop()`` is true no further fold starts."""

    def train(fold: Fold) -> None:
        if should_stop is not None and should_stop():
            return
        keep = _kept(len(y), fold.held)
        fold.without = predict(train_classifier(x[keep].float(), y[keep], fold.seed, steps), x[fold.held])

    for _ in map_fn(train, [f for f in folds if f.without is None]):
        pass


def utility_check(x: Tensor, y: Tensor, synthetic: Tensor, synthetic_label: int,
                  synthetic_sources: Sequence[Sequence[int]] | None = None, k: int = 5, seed: int = 0,
                  repeats: int = 1, steps: int = STEPS,
                  on_fold: Callable[[int, int], None] | None = None,
                  folds: Sequence[Fold] | None = None, map_fn: Mapper = map) -> UtilityResult:
    """k-fold on the real train split ``x`` / ``y`` (class ``synthetic_label`` the one the synthetic
    scans add to): per fold, a classifier on the other folds without and with ``synthetic``,
    scored on the held-out fold (AUROC of ``synthetic_label`` against the rest, balanced accuracy).
    ``synthetic_sources[i]``: the real rows synthetic scan i was derived from (a counterfactual's
    source subject, an interpolation's two ends); a synthetic scan is left out of a fold whose
    held-out rows include one of its sources, so no held-out subject is seen in training.
    ``folds``: ``utility_folds(y, k, seed, repeats)``, perhaps with the without-arm already trained
    (``train_without``); a fold without it is trained here. ``map_fn``: how the folds' classifiers
    are trained (``Mapper``); ``on_fold`` runs on the caller's thread as each fold's result comes."""
    folds = list(folds) if folds is not None else utility_folds(y, k, seed, repeats)
    train_without(x, y, folds, steps, map_fn=map_fn)

    def with_synthetic(fold: Fold) -> tuple[Tensor, int]:
        held_set = set(fold.held.tolist())
        usable = torch.tensor([not (synthetic_sources and held_set & set(synthetic_sources[j]))
                               for j in range(len(synthetic))], dtype=torch.bool)
        x_syn = synthetic[usable] if len(synthetic) else synthetic
        keep = _kept(len(y), fold.held)
        xt = torch.cat([x[keep], x_syn]).float()
        yt = torch.cat([y[keep], torch.full((len(x_syn),), synthetic_label, dtype=torch.long)])
        return predict(train_classifier(xt, yt, fold.seed, steps), x[fold.held]), len(x_syn)

    without, with_syn, d_auc, d_bal = [], [], [], []
    for done, (fold, (with_p, n_synthetic)) in enumerate(zip(folds, map_fn(with_synthetic, folds)), 1):
        y_held = y[fold.held]
        target = (y_held == synthetic_label).long()
        scores = [{"auroc": auroc(target, p[:, synthetic_label]),
                   "balanced_accuracy": balanced_accuracy(y_held, p.argmax(1)), "n_synthetic": n}
                  for p, n in ((fold.without, 0), (with_p, n_synthetic))]
        without.append(scores[0])
        with_syn.append(scores[1])
        if not math.isnan(scores[0]["auroc"]) and not math.isnan(scores[1]["auroc"]):
            d_auc.append(scores[1]["auroc"] - scores[0]["auroc"])
        d_bal.append(scores[1]["balanced_accuracy"] - scores[0]["balanced_accuracy"])
        if on_fold is not None:
            on_fold(done, len(folds))
    auc_mean, auc_ci = _interval(d_auc)
    bal_mean, bal_ci = _interval(d_bal)
    return UtilityResult(without, with_syn, auc_mean, auc_ci, bal_mean, bal_ci)
