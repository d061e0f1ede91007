"""What a preprocessing config leaves to the cohort, and how scans go back out to files.

``settle_preprocess`` fills in the settings that depend on the cohort: the native size
(``target_shape: null``), the cohort-wide intensity range (``intensity_scale: cohort``) and the
bit depth of a PNG/JPEG cohort (``image_bits``). The
settled config is what models are stored with, so a synthetic scan maps back through the same
range as the real ones. ``output_format`` picks how scans are delivered: PNG for a cohort of
PNG/JPEG images (at their bit depth), NIfTI otherwise. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cohort import Cohort
from .errors import CohortError
from .io import image_bit_depth, load_scan, scan_format, write_png, write_scan
from .options import PreprocessConfig

# Values pooled per scan for the cohort's percentiles: a strided sample is plenty for them.
PERCENTILE_SAMPLE = 200_000


def _all_images(cohort: Cohort) -> bool:
    return all(scan_format(item.path) == "image" for item in cohort)


def settle_preprocess(pre: PreprocessConfig, cohort: Cohort, rows: Sequence[int] | None = None) -> PreprocessConfig:
    """``pre`` with the native size and the cohort's intensity range filled in (unchanged when
    both are given). ``rows``: the train rows the percentiles come from (default: every row);
    the bit-depth range of PNG/JPEG images needs no rows (the format fixes it)."""
    update: dict[str, Any] = {}
    if pre.image_bits is None and pre.spatial_dims == 2 and _all_images(cohort):
        update["image_bits"] = max(image_bit_depth(item.path) for item in cohort)
    if pre.target_shape is None:
        update["target_shape"] = native_shape(cohort, pre)
    if pre.intensity_scale == "cohort" and pre.intensity_range is None:
        update["intensity_range"] = cohort_range(cohort, pre.model_copy(update=update), rows)
    return pre.model_copy(update=update) if update else pre


def native_shape(cohort: Cohort, pre: PreprocessConfig) -> tuple[int, ...]:
    """The one size every scan of the cohort has (array axes: width, height for images)."""
    if pre.target_spacing is not None:
        raise CohortError("preprocess.target_shape: the native size (null) needs target_spacing: null "
                          "(resampling changes the size); give a target_shape")
    shapes: dict[tuple[int, ...], Path] = {}
    for item in cohort:
        data, _, _ = load_scan(item.path, spatial_dims=pre.spatial_dims, nan_to_zero=pre.nan_to_zero)
        shapes.setdefault(tuple(int(s) for s in data.shape), item.path)
    if len(shapes) > 1:
        (a, first), (b, other) = list(shapes.items())[:2]
        raise CohortError(f"scans differ in size ({first.name}: {'x'.join(map(str, a))}, {other.name}: "
                          f"{'x'.join(map(str, b))}); set preprocess.target_shape to resize them to one size")
    return next(iter(shapes))


def cohort_range(cohort: Cohort, pre: PreprocessConfig, rows: Sequence[int] | None = None) -> tuple[float, float]:
    """One intensity range for every scan: a PNG/JPEG cohort's full grey range at its bit depth
    (exactly invertible: 8-bit in, the same 8-bit values out); otherwise the lower and upper
    percentiles of the values of ``rows`` pooled (train rows only, so held-out scans do not
    shape the scale)."""
    if pre.image_bits is not None:
        return 0.0, float(2**pre.image_bits - 1)
    picked = list(rows) if rows is not None else list(range(len(cohort)))
    samples = []
    for k in picked or range(len(cohort)):
        data, _, _ = load_scan(cohort.items[k].path, spatial_dims=pre.spatial_dims, nan_to_zero=pre.nan_to_zero)
        flat = data.reshape(-1)
        samples.append(flat[:: max(1, flat.size // PERCENTILE_SAMPLE)])
    pooled = np.concatenate(samples)
    low, high = (float(v) for v in np.percentile(pooled, [pre.lower_percentile, pre.upper_percentile]))
    if not high > low:
        raise CohortError(f"{cohort.source}: the cohort's intensities are constant between the "
                          f"{pre.lower_percentile:g}th and {pre.upper_percentile:g}th percentiles ({low:g}); "
                          "nothing to scale")
    return low, high


@dataclass(frozen=True)
class OutputFormat:
    """How scans of one cohort are delivered: ``.png`` at ``bits`` through ``intensity_range``
    (a PNG/JPEG cohort), or ``.nii.gz`` with ``affine``."""

    suffix: str
    affine: Any
    bits: int = 8
    intensity_range: tuple[float, float] = (0.0, 255.0)

    def write(self, path: Path, array: Any) -> Path:
        if self.suffix == ".png":
            return write_png(path, array, self.bits, self.intensity_range)
        return write_scan(path, array, self.affine)


def output_format(pre: PreprocessConfig, affine: Any) -> OutputFormat:
    """PNG at the input's bit depth for a settled config of a PNG/JPEG cohort scaled by one
    range; NIfTI for every other (volumes, 2-D NIfTI, images scaled per scan: values that no
    longer stand for grey levels). Models store the settled config, so ``mcvae sample`` and
    the workers' sample jobs deliver the same format as the augmentation did."""
    grey = pre.intensity_range
    if pre.image_bits is not None and pre.intensity_scale == "cohort" and grey is not None:
        return OutputFormat(".png", affine, pre.image_bits, grey)
    return OutputFormat(".nii.gz", affine)
