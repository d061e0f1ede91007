"""Scans to model-ready tensors: a MONAI transform chain, its on-disk cache, and the output space.

The chain works on MetaTensors, so every step updates the affine: the output is channel-first,
RAS, at the target spacing, ``target_shape`` voxels, intensities in [0, 1]. The config is a
pydantic model so it can be stored with a trained model; ``target_affine(cfg)`` is then the
geometry synthetic scans are written with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset, MetaTensor, PersistentDataset
from monai.transforms import (
    Compose,
    CropForeground,
    EnsureChannelFirst,
    EnsureType,
    GaussianSmooth,
    Orientation,
    Resize,
    ResizeWithPadOrCrop,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Spacing,
    Transform,
)

from .cohort import Cohort
from .errors import CohortError, ScanError
from .io import load_scan
from .options import PreprocessConfig
from .settle import settle_preprocess

__all__ = ["PreprocessConfig", "build_transforms", "load_tensors", "make_dataset", "target_affine"]


def target_affine(cfg: PreprocessConfig) -> np.ndarray:
    """4x4 RAS affine at the target spacing, centred on the world origin: the geometry of
    synthetic scans. Its 3x3 part equals that of every preprocessed scan's affine; the origin of
    a real scan's affine still says where its crop sat."""
    spacing = list(cfg.output_spacing) + [1.0] * (3 - cfg.spatial_dims)
    shape = list(cfg.target_shape) + [1] * (3 - cfg.spatial_dims)
    affine = np.diag(spacing + [1.0])
    affine[:3, 3] = [-s * (n - 1) / 2 for s, n in zip(spacing, shape)]
    return affine


class LoadScan(Transform):
    """Path -> MetaTensor (no channel axis) carrying the scan's affine, via ``load_scan``."""

    def __init__(self, spatial_dims: int | None = None, nan_to_zero: bool = False):
        self.spatial_dims = spatial_dims
        self.nan_to_zero = nan_to_zero

    def __call__(self, path: str | Path) -> MetaTensor:
        data, affine, meta = load_scan(path, spatial_dims=self.spatial_dims, nan_to_zero=self.nan_to_zero)
        meta = {k: v for k, v in meta.items() if k in ("filename_or_obj", "format")}
        # Without this flag MONAI counts the first spatial axis as a channel (spatial_ndim = 2).
        meta["original_channel_dim"] = "no_channel"
        return MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(affine), meta=meta,
                          spatial_ndim=data.ndim)


class AntiAlias(Transform):
    """Gaussian blur before downsampling (sigma = (factor - 1) / 2 voxels per axis, as
    scikit-image does), so coarse targets do not alias noise and thin structures."""

    def __init__(self, target_spacing: Sequence[float]):
        self.target_spacing = np.asarray(target_spacing, dtype=float)

    def __call__(self, img: MetaTensor) -> MetaTensor:
        d = len(self.target_spacing)
        linear = np.asarray(img.affine, dtype=float)[:d, :d]
        current = np.sqrt((linear**2).sum(axis=0))  # voxel size along each array axis
        sigma = np.maximum(0.0, (self.target_spacing / current - 1.0) / 2.0)
        if not sigma.any():
            return img
        return GaussianSmooth(sigma=tuple(float(s) for s in sigma))(img)


class AboveFraction:
    """CropForeground's select_fn: voxels brighter than ``fraction`` x 99.9th percentile (a
    robust maximum: ignores a few hot voxels, still inside the head when it is small).
    A class (not a lambda) so DataLoader workers can pickle it."""

    def __init__(self, fraction: float):
        self.fraction = fraction

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        flat = torch.as_tensor(img).detach().reshape(-1).float().cpu().numpy()
        step = max(1, flat.size // 1_000_000)  # a strided sample is plenty for a percentile
        return img > self.fraction * float(np.percentile(flat[::step], 99.9))


def build_transforms(cfg: PreprocessConfig) -> Compose:
    """The chain from a (spatial-only) MetaTensor to a (1, *target_shape) float32 MetaTensor."""
    if cfg.target_shape is None:
        raise ValueError("preprocess.target_shape: the native size needs the cohort "
                         "(models.data.settle.settle_preprocess fills it in)")
    steps: list = [EnsureChannelFirst(channel_dim="no_channel")]
    if cfg.spatial_dims == 3:
        steps.append(Orientation(axcodes="RAS", labels=None))
    if cfg.crop_foreground:
        # Crop first: fewer voxels to blur and resample, and resampling cannot invent a head.
        steps.append(CropForeground(select_fn=AboveFraction(cfg.foreground_fraction), margin=1,
                                    allow_smaller=True))
    if cfg.target_spacing is not None:
        steps += [
            AntiAlias(cfg.target_spacing),
            Spacing(pixdim=cfg.target_spacing, mode="bilinear", dtype=np.float32),
            ResizeWithPadOrCrop(cfg.target_shape),
        ]
    else:
        # At the native size this is the identity (area averaging over one pixel each).
        steps.append(Resize(cfg.target_shape, mode="area"))
    if cfg.intensity_scale == "cohort":
        if cfg.intensity_range is None:
            raise ValueError("preprocess.intensity_range: intensity_scale 'cohort' needs the cohort's "
                             "range (models.data.settle.settle_preprocess fills it in)")
        low, high = cfg.intensity_range
        steps.append(ScaleIntensityRange(low, high, b_min=0.0, b_max=1.0, clip=True))
    else:
        steps.append(ScaleIntensityRangePercentiles(
            cfg.lower_percentile, cfg.upper_percentile, b_min=0.0, b_max=1.0, clip=True))
    steps.append(EnsureType(dtype=torch.float32))
    return Compose(steps)


class _ScanKey:
    """Cache key for one scan: its path, size and modification time, and the config. A changed
    file or config gets a new cache entry instead of a stale tensor."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg_json = cfg.model_dump_json()

    def __call__(self, path: str) -> bytes:
        p = Path(path)
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
        stamps = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        key = repr((str(p.resolve()), stamps, self.cfg_json)).encode()
        return hashlib.sha256(key).hexdigest().encode()


def make_dataset(
    cohort: Cohort,
    cfg: PreprocessConfig,
    cache_dir: str | Path | None,
    label: str | None = None,
) -> Dataset:
    """Dataset of preprocessed MetaTensors (1, *target_shape), optionally of one class only.

    With a ``cache_dir`` each scan is preprocessed once (``monai.data.PersistentDataset``) and
    later reads load the cached tensor without opening the scan.
    """
    items = [item for item in cohort if label is None or item.label == label]
    if not items:
        raise CohortError(f"no scans of class '{label}' (classes: {', '.join(cohort.classes)})")
    if cohort.spatial_dims != cfg.spatial_dims:
        raise CohortError(
            f"cohort holds {cohort.spatial_dims}-D scans but preprocessing expects "
            f"{cfg.spatial_dims}-D (spatial_dims)"
        )
    # A config that leaves the size or the intensity range to the cohort (2-D defaults) is
    # settled on the whole cohort given; augment settles it on the train rows beforehand.
    cfg = settle_preprocess(cfg, cohort)
    data = [str(item.path) for item in items]
    transform = Compose([LoadScan(cfg.spatial_dims, cfg.nan_to_zero), build_transforms(cfg)])
    if cache_dir is None:
        return _Scans(data, transform)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return _CachedScans(data, transform, cache_dir=cache_dir, hash_func=_ScanKey(cfg),
                        track_meta=True)


def load_tensors(
    cohort: Cohort,
    cfg: PreprocessConfig,
    cache_dir: str | Path | None = None,
    label: str | None = None,
    num_workers: int = 0,
    batch_size: int = 8,
) -> torch.Tensor:
    """All (selected) scans stacked as a plain float32 tensor (N, 1, *target_shape), in cohort
    order. For cohorts that fit in memory; ``num_workers`` > 0 preprocesses in parallel."""
    dataset = make_dataset(cohort, cfg, cache_dir, label)
    try:
        return _stack(dataset, batch_size, num_workers)
    except Exception:
        if num_workers == 0:
            raise
        # A worker's ScanError reaches us as a RuntimeError holding a traceback; redo the work
        # in this process (scans done so far are cached) to raise the ScanError itself.
        return _stack(dataset, batch_size, 0)


def _stack(dataset: Dataset, batch_size: int, num_workers: int) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    # Plain tensors out: callers train on them and need no per-scan metadata.
    return torch.cat([
        (b.as_tensor() if isinstance(b, MetaTensor) else b).float() for b in loader
    ])


def _scan_error_in(exc: BaseException) -> ScanError | None:
    seen = exc
    while seen is not None:
        if isinstance(seen, ScanError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class _SurfaceScanErrors:
    """MONAI wraps errors raised inside transforms in RuntimeError("applying transform ...");
    hand the ScanError that says which file is bad back to the caller instead."""

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except RuntimeError as exc:
            err = _scan_error_in(exc)
            if err is None:
                raise
            raise err from None


class _Scans(_SurfaceScanErrors, Dataset):
    pass


class _CachedScans(_SurfaceScanErrors, PersistentDataset):
    pass
