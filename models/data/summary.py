"""A cohort described: ``summarize`` opens every scan (and so validates it), counts classes,
splits, shapes, spacings and orientations, and runs quality control; ``format_summary`` prints
that for the CLI and job reports.

Apart from ``cohort.py`` (what a cohort is, and reading one), so that the dependencies run one
way: ``preprocess`` takes a ``Cohort``, and quality control here runs ``preprocess``'s chain.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .cohort import Cohort
from .errors import CohortError
from .io import load_scan
from .options import PreprocessConfig
from .quality import preprocessed_problem, raw_problem
from .settle import settle_preprocess


def summarize(cohort: Cohort, quality: bool = True, preprocess=None) -> dict[str, Any]:
    """Open every scan and describe the cohort; problems a user should see go in ``warnings``.

    Raises ``ScanError`` for the first unreadable scan. Keys: ``n_scans``, ``classes`` (counts),
    ``splits``, ``spatial_dims``, ``shapes``, ``spacings``, ``orientations`` (counts of each),
    ``intensity`` (per class min/max), ``quality`` (scans that quality control would refuse,
    with the reason, checked with ``preprocess`` or the default preprocessing: see
    ``models.data.quality``), ``warnings``.
    """
    dims = cohort.spatial_dims
    cfg = preprocess or PreprocessConfig(spatial_dims=dims)
    unsettled = None
    if quality:
        try:  # the native size and cohort-wide range augment would use (2-D defaults)
            cfg = settle_preprocess(cfg, cohort)
        except CohortError as err:  # images of different sizes: each is checked at its own
            unsettled = str(err)
    shapes, spacings, orientations = Counter(), Counter(), Counter()
    ranges: dict[str, list[float]] = {}
    refused: list[dict[str, str]] = []
    for item in cohort:
        data, affine, meta = load_scan(item.path, spatial_dims=dims, nan_to_zero=cfg.nan_to_zero)
        shapes["x".join(map(str, meta["shape"]))] += 1
        spacings["x".join(f"{s:.3g}" for s in meta["spacing"])] += 1
        orientations[meta["axcodes"] or "n/a"] += 1
        lo, hi = float(np.min(data)), float(np.max(data))
        cur = ranges.setdefault(item.label, [lo, hi])
        cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
        if quality:
            problem = raw_problem(data, affine, cfg) or _preprocessed_problem(data, affine, meta, cfg)
            if problem:
                refused.append({"path": _shown(item.path, cohort), "problem": problem})

    warnings = list(cohort.notes) + ([f"{unsettled} (augment would refuse the cohort)"] if unsettled else [])
    warnings += [f"{r['path']}: {r['problem']} (augment would refuse it)" for r in refused]
    synthetic = sum(1 for i in cohort if i.synthetic)
    if synthetic:
        warnings.append(f"{synthetic} row(s) are synthetic (an mcvae output): augment trains on "
                        "real rows only")
    counts = cohort.counts
    if len(counts) == 1:
        warnings.append(f"only one class ('{cohort.classes[0]}'): nothing to balance against")
    warnings += [f"class '{c}' has {n} scan(s); at least 2 are needed to fit a model"
                 for c, n in counts.items() if n < 2]
    if len(spacings) > 1:
        warnings.append(f"mixed voxel spacings {dict(spacings)}: scans will be resampled")
    if len(shapes) > 1:
        warnings.append(f"mixed shapes {dict(shapes)}: scans will be cropped/padded to one shape")
    if len(orientations) > 1:
        warnings.append(f"mixed orientations {dict(orientations)}: scans will be reoriented to RAS")
    return {
        "source": str(cohort.source) if cohort.source else None,
        "n_scans": len(cohort),
        "classes": counts,
        "splits": dict(Counter(i.split for i in cohort if i.split)),
        "class_splits": _class_splits(cohort),
        "spatial_dims": dims,
        "shapes": dict(shapes),
        "spacings": dict(spacings),
        "orientations": dict(orientations),
        "intensity": {c: {"min": r[0], "max": r[1]} for c, r in sorted(ranges.items())},
        "quality": refused,
        "warnings": warnings,
    }


def _shown(path: Path, cohort: Cohort) -> str:
    """A scan's path as the user knows it: relative to the cohort's folder (no server paths in
    summaries the gateway shows), absolute when it lies elsewhere."""
    if cohort.source is not None:
        root = cohort.source if cohort.source.is_dir() else cohort.source.parent
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _class_splits(cohort: Cohort) -> dict[str, dict[str, int]]:
    """Scans per class in each split ({} when the cohort has no split)."""
    out: dict[str, dict[str, int]] = {}
    for item in cohort:
        if item.split:
            per = out.setdefault(item.split, {})
            per[item.label] = per.get(item.label, 0) + 1
    return out


def _preprocessed_problem(data, affine, meta, cfg) -> str | None:
    """Run the preprocessing chain on a scan already in memory and check its output."""
    # local: torch and MONAI load only when quality control runs the preprocessing chain
    import torch
    from monai.data import MetaTensor

    from .preprocess import build_transforms

    if cfg.target_shape is None:  # the cohort has no one native size: this scan's own
        cfg = cfg.model_copy(update={"target_shape": tuple(data.shape)})
    if cfg.intensity_scale == "cohort" and cfg.intensity_range is None:
        low, high = float(np.min(data)), float(np.max(data))
        cfg = cfg.model_copy(update={"intensity_range": (low, high if high > low else low + 1.0)})
    image = MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(affine),
                       meta={"original_channel_dim": "no_channel"}, spatial_ndim=data.ndim)
    out = build_transforms(cfg)(image)
    return preprocessed_problem(out.as_tensor().numpy() if isinstance(out, MetaTensor) else np.asarray(out))


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines of text for the CLI and job reports."""
    dims = f"{summary['spatial_dims']}-D"
    lines = [f"{summary['n_scans']} {dims} scans from {summary['source'] or '(in memory)'}"]
    lines.append("classes: " + ", ".join(f"{c} {n}" for c, n in summary["classes"].items()))
    if summary["splits"]:
        lines.append("splits: " + ", ".join(f"{s} {n}" for s, n in summary["splits"].items()))
    for key in ("shapes", "spacings", "orientations"):
        lines.append(f"{key}: " + ", ".join(f"{k} ({n})" for k, n in summary[key].items()))
    lines.append("intensity: " + ", ".join(
        f"{c} [{r['min']:.4g}, {r['max']:.4g}]" for c, r in summary["intensity"].items()))
    lines += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)
