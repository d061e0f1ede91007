"""An embedded demo cohort: cognitively normal (CN) and Alzheimer's-like (AD) T1 scans made from
the MNI152 template that ships inside the nilearn package (no download).

Each subject is the template seen through a random smooth deformation (small rotation, scale,
shift and a low-frequency displacement field), a multiplicative bias field, a scanner gain and
Rician noise. AD subjects also get enlarged ventricles (a radial expansion around them, and CSF
filling a 3-5 mm periventricular shell) and grey-matter atrophy (grey matter darkened towards
CSF), strongest in the medial temporal lobes. Everything is drawn from one seed, so a seed gives
byte-identical files (on one platform and library version).

``difficulty`` (0 to 1) makes the task harder the way real cohorts are hard: at 0 (the default) AD
is the strong, easy signature above; raising it shrinks the AD effects towards normal ageing
(effect size 1 - 0.7 d), lets every subject's ventricles and cortex vary with age whatever the
class, widens the anatomical variation (pose, deformation) and the intensity variation (bias
field, gain, contrast curve), and adds a scanner/site effect: each subject is scanned on one of
``SITES`` (a contrast curve, gain and noise level of its own). Difficulty 0 draws exactly the
random numbers it always did, so seeds keep giving the same subjects.

Scans are rendered by sampling the template at each output voxel's warped position, so the
cost is that of the output grid (a 32^3 scan takes milliseconds), not of the 1 mm template.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .cohort import Cohort, CohortItem
from .io import write_scan

CLASSES = ("CN", "AD")
# Landmarks in MNI space (mm): centre of the lateral ventricles and the two hippocampi.
VENTRICLE_CENTRE_MM = np.array([0.0, -8.0, 14.0])
VENTRICLE_RADII_MM = np.array([14.0, 24.0, 12.0])  # extent of the radial expansion
VENTRICLE_SEARCH_MM = np.array([24.0, 36.0, 22.0])  # where dark template voxels are ventricles
VENTRICLE_MAX_T1 = 90.0  # template CSF is ~60, grey matter ~165, white matter ~215
VENTRICLE_CSF_T1 = 55.0
HIPPOCAMPI_MM = np.array([[-26.0, -20.0, -16.0], [26.0, -20.0, -16.0]])
HIPPOCAMPUS_RADIUS_MM = 11.0
# The axial plane of the 2-D demo: through the bodies of the lateral ventricles.
SLICE_Z_MM = 14.0
NATIVE_SPACING_MM = 2.0
# Scanner/site effects at difficulty 1: contrast exponent (T1 -> T1^gamma on the 0-1 scale), gain
# and noise (relative to white matter). Scaled by the difficulty; the same sites for every seed,
# so a training cohort and its held-out test cohort share their scanners.
SITES = (
    {"gamma": 0.80, "gain": 1.10, "noise": 0.020},
    {"gamma": 1.00, "gain": 1.00, "noise": 0.035},
    {"gamma": 1.25, "gain": 0.88, "noise": 0.050},
)


def make_demo_cohort(
    out_dir: str | Path,
    n_control: int = 20,
    n_ad: int = 2,
    shape: tuple[int, int, int] | None = (32, 32, 32),
    seed: int = 0,
    difficulty: float = 0.0,
) -> Cohort:
    """Write ``out_dir/CN/CN_000.nii.gz ...`` and ``out_dir/AD/AD_000.nii.gz ...``; return them.

    ``shape`` is the voxel grid (isotropic spacing chosen so the brain fits with a margin);
    None gives a 2 mm grid over the brain (about 84 x 104 x 89 voxels). ``difficulty`` in [0, 1]:
    see the module's docstring.
    """
    difficulty = check_difficulty(difficulty)
    out_dir = Path(out_dir)
    grid_shape, affine = _grid(shape)
    points = _voxel_centres(grid_shape, affine)
    items = []
    for label, count in zip(CLASSES, _counts(n_control, n_ad)):
        for i in range(count):
            rng = _subject_rng(seed, label, i)
            volume = _render(points, rng, ad=label == "AD", spacing=_spacing(affine), difficulty=difficulty)
            path = out_dir / label / f"{label}_{i:03d}.nii.gz"
            write_scan(path, volume.reshape(grid_shape), affine)
            items.append(CohortItem(path, label))
    return Cohort(items, out_dir)


def make_demo_counterfactuals(
    out_dir: str | Path,
    indices: list[int] | range,
    shape: tuple[int, int, int] | None = (32, 32, 32),
    seed: int = 0,
    difficulty: float = 0.0,
) -> Cohort:
    """The ground truth of a counterfactual: CN subjects ``indices`` of ``make_demo_cohort(seed=...,
    difficulty=...)`` rendered again with the AD effect applied (``out_dir/AD/CNtoAD_<i>.nii.gz``),
    everything else about each subject unchanged (pose, deformation, ageing, bias, site, noise).
    The effect's strengths come from a stream of their own per subject, drawn as an AD subject's."""
    difficulty = check_difficulty(difficulty)
    out_dir = Path(out_dir)
    grid_shape, affine = _grid(shape)
    points = _voxel_centres(grid_shape, affine)
    items = []
    for i in indices:
        effect_rng = np.random.default_rng([seed, len(CLASSES), int(i)])  # a stream no subject uses
        volume = _render(points, _subject_rng(seed, "CN", int(i)), ad=False, spacing=_spacing(affine),
                         difficulty=difficulty, effect_rng=effect_rng)
        path = out_dir / "AD" / f"CNtoAD_{int(i):03d}.nii.gz"
        write_scan(path, volume.reshape(grid_shape), affine)
        items.append(CohortItem(path, "AD"))
    return Cohort(items, out_dir)


def make_demo_slices(
    out_dir: str | Path,
    n_control: int = 20,
    n_ad: int = 2,
    shape: tuple[int, int] = (64, 64),
    seed: int = 0,
    difficulty: float = 0.0,
) -> Cohort:
    """2-D variant: one axial 8-bit PNG per subject through the lateral ventricles, in class
    folders, like the public Kaggle Alzheimer slice sets (anterior at the top of the image)."""
    from PIL import Image

    difficulty = check_difficulty(difficulty)
    out_dir = Path(out_dir)
    grid3, affine3 = _grid((shape[0], shape[1], 1))
    affine3[2, 3] = SLICE_Z_MM  # put the one-voxel-thick grid on the ventricle plane
    points = _voxel_centres(grid3, affine3)
    items = []
    for label, count in zip(CLASSES, _counts(n_control, n_ad)):
        for i in range(count):
            rng = _subject_rng(seed, label, i)
            plane = _render(points, rng, ad=label == "AD", spacing=_spacing(affine3)[:2], difficulty=difficulty)
            plane = plane.reshape(shape)  # indexed [x, y]
            top = np.percentile(plane, 99.5)
            pixels = np.clip(plane / top * 255.0, 0, 255).round().astype(np.uint8)
            # Rows run anterior (top) to posterior, columns left to right (array is [x, y]).
            path = out_dir / label / f"{label}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(np.flipud(pixels.T))).save(path)
            items.append(CohortItem(path, label))
    return Cohort(items, out_dir)


def _counts(n_control: int, n_ad: int) -> tuple[int, int]:
    if n_control < 0 or n_ad < 0 or n_control + n_ad == 0:
        raise ValueError(f"need non-negative counts and at least one scan, got {n_control}, {n_ad}")
    return n_control, n_ad


def check_difficulty(value: float | str, name: str = "difficulty") -> float:
    """``value`` as a difficulty in [0, 1] (a number or its text, as a command line gives it); a
    ValueError naming ``name`` otherwise."""
    try:
        difficulty = float(value)
    except (TypeError, ValueError):
        difficulty = float("nan")
    if not 0.0 <= difficulty <= 1.0:  # also refuses NaN and words
        raise ValueError(f"{name}: give a number from 0 (easy) to 1 (hard), got {value!r}")
    return difficulty


def _subject_rng(seed: int, label: str, index: int) -> np.random.Generator:
    # One stream per subject: subject k is the same whatever the other counts are.
    return np.random.default_rng([seed, CLASSES.index(label), index])


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


# ----------------------------------------------------------------------------- template


def _template_path(kind: str) -> Path:
    spec = importlib.util.find_spec("nilearn")  # locate the package without importing it (slow)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo cohort needs the nilearn package (it ships the MNI152 T1)")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    path = data / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise RuntimeError(f"MNI152 template file missing from the nilearn package: {path}")
    return path


@lru_cache(maxsize=4)
def _template(factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Template maps block-averaged by ``factor`` (anti-aliasing for coarse output grids):
    T1 (0-255), grey-matter probability (0-1), distance to the ventricles (mm), their affine,
    and the brain's bounding box in mm (2 x 3, from the 1 mm template)."""
    t1, gm, ventricle_mm, affine, bbox = _template_1mm()
    if factor > 1:
        t1, gm, ventricle_mm = (_block_mean(m, factor) for m in (t1, gm, ventricle_mm))
        scale = np.diag([factor, factor, factor, 1.0])
        scale[:3, 3] = (factor - 1) / 2.0  # block centre in 1 mm voxels
        affine = affine @ scale
    return t1, gm, ventricle_mm, affine, bbox


@lru_cache(maxsize=1)
def _template_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t1_img = nib.load(_template_path("t1"))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    gm = np.asarray(nib.load(_template_path("gm")).dataobj, dtype=np.float32) / 255.0
    affine = t1_img.affine.astype(np.float64)
    voxels = np.argwhere(t1 > 0)
    corners = np.stack([voxels.min(0), voxels.max(0)]).astype(float)
    bbox = corners @ affine[:3, :3].T + affine[:3, 3]
    return t1, gm, _ventricle_distance(t1, affine), affine, bbox


def _ventricle_distance(t1: np.ndarray, affine: np.ndarray, cap: float = 40.0) -> np.ndarray:
    """Distance (mm) from each 1 mm voxel to the lateral and third ventricles: the large dark
    connected regions inside an ellipsoid around the ventricle centre. Computed on a crop
    around that ellipsoid (fast); farther voxels get ``cap``."""
    reach = VENTRICLE_SEARCH_MM + cap
    lo = np.floor(np.linalg.solve(affine[:3, :3], VENTRICLE_CENTRE_MM - reach - affine[:3, 3]))
    hi = np.ceil(np.linalg.solve(affine[:3, :3], VENTRICLE_CENTRE_MM + reach - affine[:3, 3]))
    lo = np.maximum(lo, 0).astype(int)
    hi = np.minimum(hi + 1, t1.shape).astype(int)
    crop = t1[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = (((world - VENTRICLE_CENTRE_MM) / VENTRICLE_SEARCH_MM) ** 2).sum(-1) < 1
    dark = (crop > 0) & (crop < VENTRICLE_MAX_T1) & inside
    labels, n = ndimage.label(dark)
    sizes = ndimage.sum(dark, labels, range(1, n + 1))
    ventricles = np.isin(labels, 1 + np.flatnonzero(sizes >= 500))  # drop sulci and specks
    dist = np.full(t1.shape, cap, dtype=np.float32)
    near = ndimage.distance_transform_edt(~ventricles, sampling=_spacing(affine))
    dist[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = np.minimum(near, cap)
    return dist


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    n = [s // f for s in a.shape]
    a = a[: n[0] * f, : n[1] * f, : n[2] * f]
    return a.reshape(n[0], f, n[1], f, n[2], f).mean(axis=(1, 3, 5), dtype=np.float32)


def _grid(shape: tuple[int, ...] | None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Output grid and its RAS affine: isotropic, centred on the brain, 15 % margin."""
    bbox = _template_1mm()[-1]
    extent = (bbox[1] - bbox[0]) * 1.15
    centre = bbox.mean(axis=0)
    if shape is None:
        spacing = NATIVE_SPACING_MM
        shape = tuple(int(np.ceil(e / spacing)) for e in extent)
    else:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be three positive sizes, got {shape}")
        spacing = max(e / s for e, s in zip(extent, shape) if s > 1)
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = centre - spacing * (np.asarray(shape) - 1) / 2.0
    return shape, affine


def _voxel_centres(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


# ----------------------------------------------------------------------------- one subject


def _render(
    points: np.ndarray, rng: np.random.Generator, ad: bool, spacing: np.ndarray, difficulty: float = 0.0,
    effect_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Intensities (float32) of one subject at world points (N, 3).

    ``effect_rng`` (CN subjects only): render the same subject with the AD effect applied, its
    strengths drawn from this stream. Every draw of the subject's own stream is consumed as for
    the CN scan, so pose, deformation, normal ageing, bias, site and noise are the subject's own;
    the AD effect replaces the normal shell and cortical loss and adds to the ventricles' and the
    medial temporal lobes' ageing, as an AD subject's draws do."""
    if effect_rng is not None and ad:
        raise ValueError("effect_rng: only a CN subject can be rendered with the AD effect added")
    factor = max(1, int(np.ceil(float(np.min(spacing)) / 2.0)))
    t1_map, gm_map, ventricle_map, affine, bbox = _template(factor)
    unit = (points - bbox[0]) / (bbox[1] - bbox[0])  # ~[0, 1] over the brain: for smooth fields
    d = difficulty
    # Harder cohorts draw their extra variation from a stream of their own, so that difficulty 0
    # consumes exactly the draws it always did.
    extra = np.random.default_rng(rng.integers(2**63)) if d > 0 else None
    effect = 1.0 - 0.7 * d  # AD effect size relative to the easy cohort

    # Where in the template each point comes from: global pose, then a smooth displacement.
    centre = bbox.mean(axis=0)
    pose = _rotation(rng.uniform(-4, 4, 3)) * rng.uniform(0.94, 1.06)
    shift = rng.normal(0, 3.0, 3)
    if extra is not None:
        pose = _rotation(extra.uniform(-4, 4, 3) * d) @ pose * extra.uniform(1 - 0.05 * d, 1 + 0.05 * d)
    source = (points - centre) @ pose.T + centre + shift
    source += _smooth_field(rng, unit, channels=3, scale=2.5) * (1.0 + d)
    strength = rng.uniform(0.2, 0.3) * effect if ad else 0.0
    if effect_rng is not None:
        strength = effect_rng.uniform(0.2, 0.3) * effect
    if extra is not None:  # ventricles enlarge with age in everyone
        strength += extra.uniform(-0.05, 0.15) * d
    if ad or extra is not None or effect_rng is not None:
        source = _expand_ventricles(source, strength=strength)

    vox = (source - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    t1 = ndimage.map_coordinates(t1_map, vox.T, order=1, mode="constant", cval=0.0)
    gm = ndimage.map_coordinates(gm_map, vox.T, order=1, mode="constant", cval=0.0)
    to_ventricle = ndimage.map_coordinates(ventricle_map, vox.T, order=1, mode="nearest")

    # Periventricular tissue loss: CSF fills a shell around the ventricles (AD: 3-5 mm wide).
    shell = rng.uniform(3.0, 5.0) if ad else rng.uniform(0.0, 1.0)
    if effect_rng is not None:  # the subject's own normal shell is the baseline AD widens
        normal, shell = shell, effect_rng.uniform(3.0, 5.0)
        shell = normal + (shell - normal) * effect
    if extra is not None:  # AD's shell nearer a normal one; everyone's widening with age
        if ad:
            normal = extra.uniform(0.0, 1.0)
            shell = normal + (shell - normal) * effect
        shell += extra.uniform(0.0, 2.0) * d
    csf = np.clip((shell - to_ventricle) / 2.0 + 0.5, 0.0, 1.0)
    t1 = t1 * (1.0 - csf) + VENTRICLE_CSF_T1 * csf

    # Grey-matter loss darkens GM towards CSF: mild and global with age, strong in AD's MTL.
    cortical = rng.uniform(0.08, 0.15) * effect if ad else rng.uniform(0.0, 0.04)
    temporal = rng.uniform(0.35, 0.5) * effect if ad else 0.0
    if effect_rng is not None:
        cortical = effect_rng.uniform(0.08, 0.15) * effect
        temporal = effect_rng.uniform(0.35, 0.5) * effect
    if extra is not None:
        cortical += extra.uniform(0.0, 0.08) * d
        temporal += extra.uniform(0.0, 0.12) * d
    mtl = sum(np.exp(-((source - h) ** 2).sum(-1) / (2 * HIPPOCAMPUS_RADIUS_MM**2))
              for h in HIPPOCAMPI_MM)
    t1 = t1 * (1.0 - gm * (cortical + temporal * mtl))

    bias = np.exp(_smooth_field(rng, unit, channels=1, scale=0.12)[:, 0] * (1.0 + 1.5 * d))
    t1 = t1 * bias * rng.uniform(0.9, 1.1)
    sigma = rng.uniform(0.015, 0.03) * 214.0  # relative to white matter (~214 in the template)
    if extra is not None:  # the scanner: contrast curve, gain and noise of its site
        site = SITES[int(extra.integers(len(SITES)))]
        gamma = (1.0 + (site["gamma"] - 1.0) * d) * extra.uniform(1 - 0.1 * d, 1 + 0.1 * d)
        t1 = 255.0 * (np.clip(t1, 0.0, None) / 255.0) ** gamma
        t1 = t1 * (1.0 + (site["gain"] - 1.0) * d)
        sigma = (1 - d) * sigma + d * site["noise"] * 214.0
    real = t1 + rng.normal(0.0, sigma, t1.shape)
    imag = rng.normal(0.0, sigma, t1.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)  # Rician, as magnitude MRI is


def _rotation(degrees: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, unit: np.ndarray, channels: int, scale: float,
                  controls: int = 4, fine: int = 16) -> np.ndarray:
    """Low-frequency random field at points: Gaussian values on a coarse ``controls``^3 grid
    over the unit cube, spline-upsampled once to ``fine``^3, then interpolated linearly at
    the points (8 neighbours per point instead of a cubic spline's 64). Returns (N, channels)."""
    coords = (np.clip(unit, 0.0, 1.0) * (fine - 1)).T
    out = np.empty((unit.shape[0], channels))
    for c in range(channels):
        knots = rng.normal(0.0, scale, (controls,) * 3)
        smooth = ndimage.zoom(knots, fine / controls, order=3, mode="nearest", grid_mode=True)
        out[:, c] = ndimage.map_coordinates(smooth, coords, order=1, mode="nearest")
    return out


def _expand_ventricles(source: np.ndarray, strength: float) -> np.ndarray:
    """Sample closer to the ventricle centre near it: the dark ventricles grow and push the
    surrounding tissue outwards. Monotone (so no folding) for strength < 1."""
    offset = source - VENTRICLE_CENTRE_MM
    falloff = np.exp(-0.5 * ((offset / VENTRICLE_RADII_MM) ** 2).sum(-1, keepdims=True))
    return VENTRICLE_CENTRE_MM + offset * (1.0 - strength * falloff)
