"""Quality control: scans that read fine but are junk to learn from.

Checked on every scan before any training (``augment``) and reported as warnings by ``inspect``:

- **constant**: every voxel has one value (an all-zero export, a 1x1x1 file). Nothing to scale.
- **field of view a sliver of the target grid**: along some axis the scan covers less than
  ``qc.min_fov_coverage`` of the target grid's extent (a 20 mm localiser or slab against a
  192 mm brain grid); resampling would pad it to a thin bright band.
- **nearly empty**: fewer than ``qc.min_foreground`` of the voxels are foreground, either in the
  scan as read (above its Otsu threshold: a small object in noise, which robust scaling would
  otherwise stretch into a volume of noise) or after preprocessing (brighter than
  ``qc.foreground_level`` of the volume's 99.9th percentile, the rule the crop uses) - the head
  is missing or tiny in the grid.
- **intensities out of range after preprocessing**: robust scaling should give [0, 1]; values
  beyond it mean the percentiles were degenerate (mostly padding).
"""

from __future__ import annotations

import numpy as np

from .errors import QualityError
from .options import PreprocessConfig, QCConfig

# The defaults of QCConfig (models/data/options.py), where a user changes them (augment's ``qc``).
MIN_FOREGROUND = QCConfig().min_foreground
FOREGROUND_LEVEL = QCConfig().foreground_level
MIN_FOV_COVERAGE = QCConfig().min_fov_coverage


def raw_problem(data: np.ndarray, affine: np.ndarray, cfg: PreprocessConfig,
                qc: QCConfig | None = None) -> str | None:
    """What is wrong with a scan as read (before preprocessing), or None; thresholds from ``qc``."""
    qc = qc or QCConfig()
    lo, hi = float(np.min(data)), float(np.max(data))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return f"constant intensity (every voxel is {lo:.4g}): nothing to learn from"
    foreground = float(np.mean(data > otsu_threshold(data)))
    if foreground < qc.min_foreground:
        return (f"nearly empty: {100 * foreground:.2f}% foreground voxels in the scan as read "
                f"(at least {100 * qc.min_foreground:.4g}% expected, qc.min_foreground)")
    if cfg.target_spacing is None:  # resized, not resampled: the grid is always filled
        return None
    d = data.ndim
    linear = np.asarray(affine, dtype=float)[:3, :d]
    spacing = np.sqrt((linear**2).sum(axis=0))
    extent = np.asarray(data.shape[:d]) * spacing  # mm per array axis
    # Which world (RAS) axis each array axis runs along, to compare with the target's extents.
    world_axis = np.abs(linear).argmax(axis=0)
    target = np.asarray(cfg.target_shape) * np.asarray(cfg.target_spacing)
    for axis in range(d):
        k = int(world_axis[axis]) if d == 3 else axis
        coverage = extent[axis] / target[k]
        if coverage < qc.min_fov_coverage:
            return (f"field of view {extent[axis]:.0f} mm along axis {axis} covers only "
                    f"{100 * coverage:.0f}% of the {target[k]:.0f} mm target grid (a sliver; "
                    f"at least {100 * qc.min_fov_coverage:.4g}% is needed, qc.min_fov_coverage)")
    return None


def otsu_threshold(data: np.ndarray, bins: int = 256) -> float:
    """The intensity that best splits the scan into two classes (Otsu 1979: maximal
    between-class variance), from a histogram of at most about a million voxels."""
    flat = np.asarray(data, dtype=np.float64).reshape(-1)
    flat = flat[:: max(1, flat.size // 1_000_000)]
    counts, edges = np.histogram(flat, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    below, above = weight[:-1], total - weight[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below = mass[:-1] / below
        mean_above = (total_mass - mass[:-1]) / above
        between = below * above * (mean_below - mean_above) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(edges[1:-1][int(np.argmax(between))])


def preprocessed_problem(volume: np.ndarray, qc: QCConfig | None = None) -> str | None:
    """What is wrong with a preprocessed scan (values meant to be in [0, 1]), or None."""
    qc = qc or QCConfig()
    volume = np.asarray(volume, dtype=np.float32)
    lo, hi = float(volume.min()), float(volume.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        return (f"intensities [{lo:.4g}, {hi:.4g}] after preprocessing, outside [0, 1]: "
                "the scan is mostly background or padding")
    top = float(np.percentile(volume, 99.9))
    foreground = float(np.mean(volume > qc.foreground_level * top)) if top > 0 else 0.0
    if foreground < qc.min_foreground:
        return (f"nearly empty after preprocessing: {100 * foreground:.1f}% foreground voxels "
                f"(at least {100 * qc.min_foreground:.4g}% expected, qc.min_foreground)")
    return None


def refuse(path, problem: str | None) -> None:
    if problem is not None:
        raise QualityError(path, problem)
