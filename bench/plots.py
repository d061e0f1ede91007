"""Figures more than one benchmark draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _planes(v: np.ndarray) -> list[np.ndarray]:
    x, y, z = (s // 2 for s in v.shape)
    return [np.rot90(v[:, :, z]), np.rot90(v[:, y, :]), np.rot90(v[x, :, :])]


def plot_montage(rows: list[tuple[str, torch.Tensor]], path: Path, seed: int, per_row: int = 4) -> None:
    """The first ``per_row`` scans of each row, three mid planes each; ``seed``: the run's seed
    the scans come from (named in the title)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), per_row * 3, figsize=(1.4 * per_row * 3, 1.6 * len(rows)), squeeze=False)
    for r, (name, scans) in enumerate(rows):
        for ax in axes[r]:
            ax.axis("off")
        for i in range(min(per_row, len(scans))):
            for p, img in enumerate(_planes(scans[i, 0].numpy())):
                ax = axes[r, i * 3 + p]
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(name, fontsize=9, loc="left")
    title = f"AD scans, seed {seed}: real vs synthetic (axial / coronal / sagittal)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # a fresh checkout has no results folder yet
    fig.savefig(path, dpi=100, metadata={"Title": title})  # the PNG's own title too
    plt.close(fig)
