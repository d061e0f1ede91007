"""How scans are brought into one space: the preprocessing config, torch-free.

It lives apart from the MONAI chain (``preprocess.py``) so the gateway can validate a job's
``preprocess`` settings at submit time without importing torch or MONAI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


class PreprocessConfig(BaseModel):
    """How scans are brought into one space. ``target_spacing=None`` resizes instead of resampling
    (for 2-D slice sets whose pixel spacing is unknown); then the output spacing varies per scan.

    Defaults per kind (``_defaults_per_dimension``):

    - volumes (3-D): resample to 6 mm, crop each scan to its foreground, pad or crop to 32^3, and
      scale each scan's intensities by its own percentiles (scanners' units differ per scan);
    - images (2-D): keep the frame and the native size (``target_shape: null``, no crop) and
      scale every image by one cohort-wide range (``intensity_scale: cohort``): the pixel format's
      full range for PNG/JPEG (0-255 for 8-bit, 0-65535 for 16-bit), so an image read and written
      back is the same image; the percentiles pooled over the train rows for other 2-D files.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    spatial_dims: Literal[2, 3] = 3
    target_spacing: tuple[float, ...] | None = Field((6.0, 6.0, 6.0), description="mm per voxel")
    # None ("native"): the cohort's own size, which every scan must share (2-D images' default).
    target_shape: tuple[int, ...] | None = (32, 32, 32)
    crop_foreground: bool = True
    # Foreground = voxels above this fraction of the 99.9th intensity percentile. Noise keeps the
    # background of real MRI above 0, so MONAI's default "x > 0" would crop nothing.
    foreground_fraction: float = Field(0.1, ge=0, lt=1)
    # "scan": each scan's lower/upper percentiles map to [0, 1]; "cohort": one range for every
    # scan (intensity_range, filled from the cohort by models.data.settle when not given).
    intensity_scale: Literal["scan", "cohort"] = "scan"
    lower_percentile: float = Field(1.0, ge=0, le=100)
    upper_percentile: float = Field(99.0, ge=0, le=100)
    intensity_range: tuple[float, float] | None = Field(
        None, description="intensity_scale 'cohort': the raw values mapped to 0 and 1")
    # Filled from the cohort (models.data.settle): the bit depth of a PNG/JPEG cohort, whose
    # scans are then delivered as PNGs of that depth; None for other files.
    image_bits: Literal[8, 16] | None = None
    # NaN or infinite voxels (some pipelines write NaN outside the brain) are refused unless the
    # user says they are background: then they read as 0. Never a silent fix.
    nan_to_zero: bool = False

    @model_validator(mode="before")
    @classmethod
    def _defaults_per_dimension(cls, data):
        # Defaults must have one entry per spatial dimension, so they depend on spatial_dims.
        # 2-D slices (PNG/JPEG) carry no pixel size, so by default they are not resampled; their
        # frame, size and grey levels are kept (see the class docstring).
        if isinstance(data, dict):
            data = dict(data)
            dims = data.get("spatial_dims", 3)
            data.setdefault("target_spacing", 6.0 if dims == 3 else None)
            data.setdefault("target_shape", (32,) * dims if dims == 3 else None)
            data.setdefault("crop_foreground", dims == 3)
            data.setdefault("intensity_scale", "scan" if dims == 3 else "cohort")
        return data

    @field_validator("target_spacing", "target_shape", mode="before")
    @classmethod
    def _scalar_to_tuple(cls, v, info: ValidationInfo):
        # A single number means isotropic in every spatial dimension.
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (v,) * info.data.get("spatial_dims", 3)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessConfig:
        d = self.spatial_dims
        if self.target_shape is not None and (len(self.target_shape) != d or any(s < 1 for s in self.target_shape)):
            raise ValueError(f"target_shape must be {d} positive sizes, got {self.target_shape}")
        if self.target_spacing is not None and (
            len(self.target_spacing) != d or any(s <= 0 for s in self.target_spacing)
        ):
            raise ValueError(
                f"target_spacing must be {d} positive sizes, got {self.target_spacing}"
            )
        if self.lower_percentile >= self.upper_percentile:
            raise ValueError("lower_percentile must be below upper_percentile")
        if self.intensity_range is not None and not self.intensity_range[0] < self.intensity_range[1]:
            raise ValueError(f"intensity_range must be (low, high) with low below high, got {self.intensity_range}")
        return self

    @property
    def output_spacing(self) -> tuple[float, ...]:
        return self.target_spacing or (1.0,) * self.spatial_dims


class QCConfig(BaseModel):
    """Quality control (``models.data.quality``): the thresholds a scan must pass before any
    training, and what happens to one that does not. Defaults are the checks' own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_foreground: float = Field(0.05, ge=0, le=1, description=(
        "fewest foreground voxels (fraction of the scan, as read above its Otsu threshold and after "
        "preprocessing); below it a scan is 'nearly empty'. 0 turns the check off"))
    foreground_level: float = Field(0.1, ge=0, lt=1, description=(
        "after preprocessing, foreground = voxels brighter than this fraction of the 99.9th percentile"))
    min_fov_coverage: float = Field(0.25, ge=0, le=1, description=(
        "smallest fraction of the target grid's extent a scan must cover along every axis (a "
        "thinner field of view is a sliver). 0 turns the check off"))
    skip_bad_scans: bool = Field(False, description=(
        "false: a scan that fails quality control stops the job before training (one line naming "
        "it); true: it is left out of training, listed with the reason in report/summary.txt and "
        "metrics.json, and still written to real/"))
