"""Pictures and numbers people look at: slice montages, training curves, memorisation audit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; workers and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import torch

PLANE_NAMES = ("axial", "coronal", "sagittal")


def _planes(volume: np.ndarray) -> list[np.ndarray]:
    """Central axial, coronal and sagittal slices of a RAS volume (x, y, z), as images.

    rot90 runs the first array axis left to right across the image. In RAS x grows towards the
    patient's right, so axial and coronal views show the patient's left on the image's left (the
    "neurological" convention) and sagittal views posterior on the left; ``_mark_sides`` labels it.
    """
    x, y, z = (s // 2 for s in volume.shape)
    return [np.rot90(volume[:, :, z]), np.rot90(volume[:, y, :]), np.rot90(volume[x, :, :])]


def _mark_sides(ax, plane: str) -> None:
    """Orientation letters at the panel's edges: R/L for axial and coronal, A/P for sagittal."""
    left, right = ("P", "A") if plane == "sagittal" else ("L", "R")
    style = {"color": "yellow", "fontsize": 6, "fontweight": "bold", "va": "center", "transform": ax.transAxes}
    ax.text(0.02, 0.5, left, ha="left", **style)
    ax.text(0.98, 0.5, right, ha="right", **style)


def slice_montage(real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], path: Path,
                  title: str, per_row: int = 4) -> Path:
    """Real scans above synthetic ones, saved as a PNG (see ``montage_figure``)."""
    return _save(montage_figure(real, synthetic, title, per_row), path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def montage_figure(real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], title: str,
                   per_row: int = 4):
    """Real scans above synthetic ones; three planes each for volumes, the slice for 2-D.

    Row names sit in the left margin (not on a panel), plane names head the columns, and every
    volume panel carries its orientation letters.
    """
    rows = [("real", list(real)[:per_row]), ("synthetic", list(synthetic)[:per_row])]
    rows = [(name, scans) for name, scans in rows if scans]
    planes = 3 if rows and rows[0][1][0].ndim == 3 else 1
    n_cols = max(len(scans) for _, scans in rows) * planes
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols + 0.9, 1.8 * len(rows) + 0.5),
                             squeeze=False)
    for r, (name, scans) in enumerate(rows):
        for ax in axes[r]:
            ax.axis("off")
        for i, scan in enumerate(scans):
            # 2-D arrays are (x, y) with y running down the image, as load_scan reads a PNG:
            # the transpose shows them as an image viewer does (rot90 turned them upside down).
            images = _planes(scan) if planes == 3 else [scan.T]
            for p, image in enumerate(images):
                ax = axes[r, i * planes + p]
                ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
                if planes == 3:
                    _mark_sides(ax, PLANE_NAMES[p])
                    if r == 0:
                        ax.set_title(f"#{i + 1} {PLANE_NAMES[p]}" if p == 0 else PLANE_NAMES[p], fontsize=7)
                elif r == 0:
                    ax.set_title(f"#{i + 1}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.9 / (1.6 * n_cols + 0.9), 0, 1, 0.95))
    for r, (name, _) in enumerate(rows):  # in the left margin, centred on the row
        box = axes[r, 0].get_position()
        fig.text(box.x0 - 0.01, (box.y0 + box.y1) / 2, name, rotation=90, ha="right", va="center", fontsize=9)
    return fig


def training_curves(records: list[dict[str, Any]], path: Path, title: str,
                    target_accept: float | None = None) -> Path:
    """Training curves saved as a PNG (see ``curves_figure``)."""
    return _save(curves_figure(records, title, target_accept), path)


def curves_figure(records: list[dict[str, Any]], title: str, target_accept: float | None = None):
    """ELBO per voxel (nats), acceptance (with its target), beta and step size per epoch;
    phase 2 shaded.

    The ELBO is shown per voxel in nats, higher is better: -bits/dim of a continuous density is
    often negative and reads backwards.
    """
    epochs = [r["epoch"] for r in records]
    panels = [("elbo_per_voxel", "ELBO per voxel (nats, higher is better)"), ("accept", "mean acceptance"),
              ("beta", "entropy weight beta"), ("step_size", "step size h")]
    derived = [{**r, "elbo_per_voxel": (-r["bits_per_dim"] * math.log(2)
                                        if r.get("bits_per_dim") is not None else None)} for r in records]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6))
    phase2 = [r["epoch"] for r in records if r.get("phase") == 2]
    for ax, (key, label) in zip(axes, panels):
        points = [(e, r[key]) for e, r in zip(epochs, derived) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker=".", lw=1)
        if key == "accept" and target_accept is not None:
            ax.axhline(target_accept, color="tab:red", ls="--", lw=1, label=f"target {target_accept:.3g}")
            ax.legend(fontsize=7, loc="lower right")
        if phase2:
            ax.axvspan(min(phase2) - 0.5, max(phase2) + 0.5, color="tab:orange", alpha=0.1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title + " (shaded: MCMC phase)", fontsize=10)
    fig.tight_layout()
    return fig


def gradient_energy(x: torch.Tensor) -> float:
    """Mean squared spatial gradient per voxel (central differences over the interior) of scans
    (N, C, *spatial), 2-D or 3-D: what blur takes away. The ratio synthetic / real of one class is
    the report's sharpness check (a classifier can learn "blurred = minority")."""
    v = x.double()
    dims = v.dim() - 2
    if not len(v) or min(v.shape[2:]) < 3:
        return float("nan")
    interior = [slice(1, -1)] * dims
    total = 0.0
    for axis in range(dims):
        ahead, behind = list(interior), list(interior)
        ahead[axis], behind[axis] = slice(2, None), slice(None, -2)
        total = total + ((v[(..., *ahead)] - v[(..., *behind)]) / 2) ** 2
    return float(total.mean())


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS-per-voxel distance between the scans of ``a`` and ``b`` row by row (``b`` may hold one
    scan, broadcast against every scan of ``a``)."""
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1).sqrt()


def quantiles(values: torch.Tensor) -> dict[str, float] | None:
    """min, median and max of ``values`` (None when there are none)."""
    if not len(values):
        return None
    v = values.double()
    return {"min": float(v.min()), "median": float(v.median()), "max": float(v.max())}


def nearest_real(real: torch.Tensor, synthetic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each synthetic scan's RMS-per-voxel distance to its nearest real scan, and that scan's index."""
    if len(synthetic) == 0 or len(real) == 0:
        return torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.long)
    real_flat, syn_flat = real.flatten(1).double(), synthetic.flatten(1).double()
    return (torch.cdist(syn_flat, real_flat) / math.sqrt(real_flat.shape[1])).min(1)


def real_nearest(real: torch.Tensor) -> torch.Tensor:
    """Each real scan's RMS-per-voxel distance to its nearest other real scan."""
    real_flat = real.flatten(1).double()
    real_real = torch.cdist(real_flat, real_flat) / math.sqrt(real_flat.shape[1])
    real_real.fill_diagonal_(float("inf"))
    return real_real.min(1).values


def near_copy_threshold(real: torch.Tensor, copy_fraction: float = 0.5) -> float:
    """Below this distance to a real scan a synthetic scan is a near-copy: ``copy_fraction``
    times the smallest distance between two distinct real scans (0 with fewer than 2 scans)."""
    return copy_fraction * float(real_nearest(real).min()) if len(real) > 1 else 0.0


# Below this ratio a model reconstructs a class's training scans far more alike than they are:
# it learned the class mean rather than its subjects, so its new scans look alike too. Measured
# on the AD scans of `mcvae demo` (docs/RESULTS.md, "The class-mean plateau and retrains"):
# 0.02 for a shared model stuck on the class-mean plateau (--difficulty 0.6, seed 0), 0.89-0.98
# for shared models that learned their subjects (seeds 1-2 and the default cohort), 1.01 for the
# per-class conv model.
SUBJECT_SPREAD_WARNING = 0.25


def subject_spread(real: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, Any] | None:
    """How far apart the model's reconstructions of a class's training scans lie, against the
    scans themselves: median nearest-neighbour RMS distance of each, and their ratio (about 1: the
    model tells the subjects apart; near 0: it gives every scan the class mean). None with fewer
    than 2 scans."""
    if len(real) < 2:
        return None
    real_nn, recon_nn = float(real_nearest(real).median()), float(real_nearest(reconstructions).median())
    ratio = recon_nn / real_nn if real_nn > 0 else 1.0
    return {"real_nn_median": real_nn, "reconstruction_nn_median": recon_nn, "ratio": ratio,
            "warning": ratio < SUBJECT_SPREAD_WARNING}


# Two real train scans closer than this fraction of the cohort's median nearest-neighbour distance
# are one subject twice (a repeat scan, a copied file). The near-copy threshold is half the
# smallest real-to-real distance of a class, so such a pair would set it near 0 and let copies of
# that subject through: issue 25's two minority scans of one subject set 0.0008 and passed 8
# copies.
DUPLICATE_FRACTION = 0.1


def duplicate_pairs(scans: torch.Tensor, reference: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, RMS distance) of ``scans`` closer than DUPLICATE_FRACTION x ``reference``."""
    if len(scans) < 2:
        return []
    flat = scans.flatten(1).double()
    pairwise = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    close = torch.nonzero(torch.triu(pairwise < DUPLICATE_FRACTION * reference, diagonal=1))
    return [(int(i), int(j), float(pairwise[i, j])) for i, j in close]


# Synthetic-to-synthetic diversity is poor when more than this share of the synthetic pairs lie
# closer to each other than the near-copy threshold (no two real train scans are that alike), or
# when more than SHARED_NEAREST_WARNING of the scans (and at least 3) have one real scan as their
# nearest, beyond twice the share each real scan would get if the draws spread evenly. In
# `mcvae demo` (issue 25) 160 of 630 pairs (25 %) lay that close and 17 of 36 scans shared one.
CLOSE_PAIRS_WARNING = 0.1
SHARED_NEAREST_WARNING = 1 / 3


def synthetic_diversity(real: torch.Tensor, synthetic: torch.Tensor, threshold: float,
                        sources: list[int] | None = None) -> dict[str, Any] | None:
    """How different the synthetic scans are from each other: the share of synthetic pairs closer
    than ``threshold`` (the near-copy threshold, RMS per voxel), and the most synthetic scans that
    have one real scan as their nearest. None with fewer than 2 synthetic scans. ``sources``: the
    real subject each scan alters (generator variation): then only pairs of different subjects
    count, and many scans sharing their nearest real scan (their source, by design) warn nothing."""
    k = len(synthetic)
    if k < 2 or not len(real):
        return None
    flat = synthetic.flatten(1).double()
    pairwise = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    if sources is not None:
        src = torch.tensor(sources)
        upper &= src[:, None] != src[None, :]
    n_pairs, close = int(upper.sum()), int((pairwise[upper] < threshold).sum())
    nearest = nearest_real(real, synthetic)[1]
    shared_counts = torch.bincount(nearest, minlength=len(real))
    most, index = int(shared_counts.max()), int(shared_counts.argmax())
    close_share = close / n_pairs if n_pairs else 0.0
    crowded = sources is None and most >= 3 and most / k > max(SHARED_NEAREST_WARNING, 2 / len(real))
    return {"synthetic_pairs": n_pairs, "close_pairs": close, "close_pair_share": close_share,
            "threshold": threshold, "most_sharing_one_nearest_real": most, "that_real_index": index,
            "n_synthetic": k, "n_real": len(real), "pairs_of_different_sources": sources is not None,
            "warning": close_share > CLOSE_PAIRS_WARNING or crowded}


def memorisation_audit(real: torch.Tensor, synthetic: torch.Tensor, copy_fraction: float = 0.5,
                       own: list[list[int]] | None = None,
                       to_source: torch.Tensor | None = None) -> dict[str, Any]:
    """Nearest-real-scan distances (RMS per voxel) of synthetic scans vs. real-to-real.

    A synthetic scan is flagged as a likely copy when it lies closer to a real training scan
    than ``copy_fraction`` times the smallest distance between two distinct real scans: no real
    pair is that alike, so such a scan adds no new subject.

    Scans derived from real subjects (a variation is its source subject altered; a counterfactual,
    a subject of another class moved to this one) say so: ``own[i]``, the positions in ``real`` of
    scan i's sources, are left out of its nearest-scan search, since lying near its own source is
    what such a scan is, while lying near *another* subject would be a copy of that person; and
    ``to_source[i]``, its distance to its nearest source (of any class), is reported beside.
    """
    real_nn = real_nearest(real)
    if own is None or not len(synthetic):
        syn_nn, nearest = nearest_real(real, synthetic)
    else:
        real_flat = real.flatten(1).double()
        dist = torch.cdist(synthetic.flatten(1).double(), real_flat) / math.sqrt(real_flat.shape[1])
        for i, rows in enumerate(own):
            dist[i, rows] = float("inf")  # a class of one subject leaves a variation no other scan
        syn_nn, nearest = dist.min(1)
    threshold = near_copy_threshold(real, copy_fraction)
    finite = syn_nn[torch.isfinite(syn_nn)]
    flagged = [int(i) for i in torch.nonzero(syn_nn < threshold).flatten()]
    audit = {
        "real_to_real_nn": {"min": float(real_nn.min()), "median": float(real_nn.median())},
        "synthetic_to_real_nn": (
            {"min": float(finite.min()), "median": float(finite.median())} if len(finite) else None
        ),
        "copy_threshold": threshold,
        "flagged": [{"synthetic_index": i, "nearest_real_index": int(nearest[i]),
                     "distance": float(syn_nn[i])} for i in flagged],
        "synthetic_nn": [float(d) if math.isfinite(d) else None for d in syn_nn.tolist()],
    }
    if own is not None:
        audit["nearest_excludes_own_source"] = True
    if to_source is not None and len(to_source):
        audit["synthetic_to_source"] = quantiles(to_source)
    return audit
