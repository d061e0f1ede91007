"""Pictures and numbers people look at: slice montages, training curves, memorisation audit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _planes(volume: np.ndarray) -> list[np.ndarray]:
    """Central axial, coronal and sagittal slices of a RAS volume (x, y, z), as images."""
    x, y, z = (s // 2 for s in volume.shape)
    return [np.rot90(volume[:, :, z]), np.rot90(volume[:, y, :]), np.rot90(volume[x, :, :])]


def slice_montage(real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], path: Path,
                  title: str, per_row: int = 4) -> Path:
    """Real scans above synthetic ones; three planes each for volumes, the slice for 2-D."""
    rows = [("real", list(real)[:per_row]), ("synthetic", list(synthetic)[:per_row])]
    rows = [(name, scans) for name, scans in rows if scans]
    planes = 3 if rows and rows[0][1][0].ndim == 3 else 1
    n_cols = max(len(scans) for _, scans in rows) * planes
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols, 1.8 * len(rows)), squeeze=False)
    for r, (name, scans) in enumerate(rows):
        for ax in axes[r]:
            ax.axis("off")
        for i, scan in enumerate(scans):
            images = _planes(scan) if planes == 3 else [np.rot90(scan)]
            for p, image in enumerate(images):
                ax = axes[r, i * planes + p]
                ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
                if i == 0 and p == 0:
                    ax.set_title(name, fontsize=9, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_curves(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """ELBO (bits/dim), acceptance, beta and step size per epoch; phase 2 shaded."""
    epochs = [r["epoch"] for r in records]
    panels = [("bits_per_dim", "-ELBO (bits/dim)"), ("accept", "mean acceptance"),
              ("beta", "entropy weight beta"), ("step_size", "step size h")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6))
    phase2 = [r["epoch"] for r in records if r.get("phase") == 2]
    for ax, (key, label) in zip(axes, panels):
        points = [(e, r[key]) for e, r in zip(epochs, records) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker=".", lw=1)
        if phase2:
            ax.axvspan(min(phase2) - 0.5, max(phase2) + 0.5, color="tab:orange", alpha=0.1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title + " (shaded: MCMC phase)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def memorisation_audit(real: torch.Tensor, synthetic: torch.Tensor, copy_fraction: float = 0.5) -> dict[str, Any]:
    """Nearest-real-scan distances (RMS per voxel) of synthetic scans vs. real-to-real.

    A synthetic scan is flagged as a likely copy when it lies closer to a real training scan
    than ``copy_fraction`` times the smallest distance between two distinct real scans: no real
    pair is that alike, so such a scan adds no new subject.
    """
    real_flat = real.flatten(1).double()
    syn_flat = synthetic.flatten(1).double()
    scale = math.sqrt(real_flat.shape[1])
    real_real = torch.cdist(real_flat, real_flat) / scale
    real_real.fill_diagonal_(float("inf"))
    real_nn = real_real.min(1).values
    if len(syn_flat):
        syn_nn, nearest = (torch.cdist(syn_flat, real_flat) / scale).min(1)
    else:
        syn_nn, nearest = torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.long)
    threshold = copy_fraction * float(real_nn.min()) if len(real_nn) > 1 else 0.0
    flagged = [int(i) for i in torch.nonzero(syn_nn < threshold).flatten()]
    return {
        "real_to_real_nn": {"min": float(real_nn.min()), "median": float(real_nn.median())},
        "synthetic_to_real_nn": (
            {"min": float(syn_nn.min()), "median": float(syn_nn.median())} if len(syn_nn) else None
        ),
        "copy_threshold": threshold,
        "flagged": [{"synthetic_index": i, "nearest_real_index": int(nearest[i]),
                     "distance": float(syn_nn[i])} for i in flagged],
        "synthetic_nn": [float(d) for d in syn_nn],
    }
