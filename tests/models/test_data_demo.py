"""The embedded demo cohort: real files, deterministic, and AD differs from CN as it should."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from PIL import Image

from models.data import (
    PreprocessConfig,
    load_scan,
    load_tensors,
    make_demo_cohort,
    make_demo_counterfactuals,
    make_demo_slices,
    read_cohort,
)
from models.data.demo import HIPPOCAMPI_MM, VENTRICLE_CENTRE_MM, _template_path

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo (20 CN, 2 AD at 32^3), generated once for this module."""
    return make_demo_cohort(tmp_path_factory.mktemp("demo"))


def world_grid(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def test_default_demo_is_ten_to_one_and_readable(demo):
    assert demo.counts == {"AD": 2, "CN": 20}
    assert read_cohort(demo.source).counts == demo.counts
    for item in (demo.items[0], demo.items[-1]):
        assert item.path.parent.name == item.label and item.path.name.endswith(".nii.gz")
        img = nib.load(item.path)
        assert img.shape == (32, 32, 32) and img.get_data_dtype() == np.float32
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.header["descrip"].item() == b""
        monai_img = LoadImage(image_only=True)(str(item.path))
        np.testing.assert_array_equal(np.asarray(monai_img), img.get_fdata(dtype=np.float32))
        data = img.get_fdata()
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 100


def test_template_comes_from_the_nilearn_package():
    package = Path(next(iter(importlib.util.find_spec("nilearn").submodule_search_locations)))
    assert _template_path("t1").is_relative_to(package)


def test_same_seed_same_bytes_different_seed_different_bytes(demo, tmp_path):
    # Subject k depends only on (seed, class, k): a smaller cohort repeats the first subjects.
    again = make_demo_cohort(tmp_path / "again", n_control=2, n_ad=1, seed=0)
    for item in again:
        twin = demo.source / item.label / item.path.name
        assert item.path.read_bytes() == twin.read_bytes(), item.path.name
    other = make_demo_cohort(tmp_path / "other", n_control=2, n_ad=1, seed=1)
    for item in other:
        assert item.path.read_bytes() != (demo.source / item.label / item.path.name).read_bytes()


def test_subjects_differ_from_each_other(demo):
    a, b = (load_scan(demo.items[i].path)[0] for i in (2, 3))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < 0.99


def _normalised(path):
    data, affine, _ = load_scan(path)
    return data / np.percentile(data, 99), world_grid(data.shape, affine)


def test_ad_has_more_csf_near_the_ventricles_than_any_control(demo):
    def dark_near_ventricles(path):
        x, world = _normalised(path)
        near = np.linalg.norm(world - VENTRICLE_CENTRE_MM, axis=-1) < 20
        return int(((x < 0.45) & near).sum())

    counts = {label: [dark_near_ventricles(i.path) for i in demo.of_class(label)]
              for label in ("CN", "AD")}
    assert min(counts["AD"]) > max(counts["CN"]), counts


def test_ad_medial_temporal_lobes_are_darker(demo):
    def mtl_mean(path):
        x, world = _normalised(path)
        near = np.min([np.linalg.norm(world - h, axis=-1) for h in HIPPOCAMPI_MM], 0) < 12
        return float(x[near].mean())

    cn = [mtl_mean(i.path) for i in demo.of_class("CN")]
    ad = [mtl_mean(i.path) for i in demo.of_class("AD")]
    assert np.mean(ad) < np.mean(cn) - 0.05, (ad, cn)


def test_native_grid_and_bad_counts(tmp_path):
    cohort = make_demo_cohort(tmp_path, n_control=1, n_ad=0, shape=None)
    img = nib.load(cohort.items[0].path)
    np.testing.assert_allclose(img.header.get_zooms(), (2.0, 2.0, 2.0))
    assert min(img.shape) > 70
    with pytest.raises(ValueError, match="at least one scan"):
        make_demo_cohort(tmp_path, n_control=0, n_ad=0)


def test_demo_slices_are_png_cohort_with_larger_ad_ventricles(tmp_path):
    cohort = make_demo_slices(tmp_path, n_control=6, n_ad=2, shape=(64, 64))
    again = make_demo_slices(tmp_path / "again", n_control=1, n_ad=0, shape=(64, 64))
    assert again.items[0].path.read_bytes() == cohort.items[0].path.read_bytes()
    assert read_cohort(tmp_path).spatial_dims == 2
    with Image.open(cohort.items[0].path) as img:
        assert img.mode == "L" and img.size == (64, 64)

    def dark_centre(path):
        x = load_scan(path, spatial_dims=2)[0]  # [x, row], rows run anterior to posterior
        return int((x[24:40, 20:40] < 0.35 * np.percentile(x, 99)).sum())

    ad = [dark_centre(i.path) for i in cohort.of_class("AD")]
    cn = [dark_centre(i.path) for i in cohort.of_class("CN")]
    assert np.mean(ad) > 1.5 * np.mean(cn), (ad, cn)


def test_demo_preprocesses_with_default_config_without_cutting_the_brain(demo, tmp_path):
    x = load_tensors(demo, PreprocessConfig(), cache_dir=tmp_path / "cache")
    assert x.shape == (22, 1, 32, 32, 32)
    inner = x[:, :, 1:-1, 1:-1, 1:-1]
    border = x.sum() - inner.sum()
    assert float(border) < 0.02 * float(x.sum())  # the head fits inside the 192 mm box


def test_demo_slices_preprocess_with_default_2d_config(tmp_path):
    cohort = make_demo_slices(tmp_path, n_control=2, n_ad=1, shape=(48, 40))
    x = load_tensors(cohort, PreprocessConfig(spatial_dims=2))
    # the native size (array axes x, y = width, height) and the 8-bit scale 0..255 -> 0..1
    raw = np.stack([load_scan(item.path, spatial_dims=2)[0] for item in cohort])
    assert x.shape == (3, 1, 48, 40)
    np.testing.assert_allclose(x[:, 0].numpy(), raw / 255.0, atol=1e-6)


# ----------------------------------------------------------------------------- difficulty

SMALL = {"n_control": 2, "n_ad": 1, "shape": (16, 16, 16)}


def _bytes(cohort):
    return {(item.label, item.path.name): item.path.read_bytes() for item in cohort}


def test_difficulty_zero_is_the_default_cohort_byte_for_byte(tmp_path):
    default = _bytes(make_demo_cohort(tmp_path / "default", seed=3, **SMALL))
    zero = _bytes(make_demo_cohort(tmp_path / "zero", seed=3, difficulty=0, **SMALL))
    assert len(default) == 3 and zero == default
    slices = _bytes(make_demo_slices(tmp_path / "s", n_control=2, n_ad=1, shape=(32, 32), seed=3))
    slices0 = _bytes(make_demo_slices(tmp_path / "s0", n_control=2, n_ad=1, shape=(32, 32), seed=3, difficulty=0.0))
    assert slices0 == slices


def test_hard_cohort_differs_from_easy_and_is_deterministic_per_seed(tmp_path):
    easy = _bytes(make_demo_cohort(tmp_path / "easy", seed=3, **SMALL))
    hard = _bytes(make_demo_cohort(tmp_path / "hard", seed=3, difficulty=1, **SMALL))
    again = _bytes(make_demo_cohort(tmp_path / "again", seed=3, difficulty=1, **SMALL))
    other = _bytes(make_demo_cohort(tmp_path / "other", seed=4, difficulty=1, **SMALL))
    assert hard.keys() == easy.keys() == other.keys()
    assert hard == again
    for key in hard:
        assert hard[key] != easy[key], key
        assert hard[key] != other[key], key
    # A difficulty in between is neither end.
    half = _bytes(make_demo_cohort(tmp_path / "half", seed=3, difficulty=0.5, **SMALL))
    assert all(half[k] != easy[k] and half[k] != hard[k] for k in half)
    # The 2-D slices too.
    s_easy = _bytes(make_demo_slices(tmp_path / "s_easy", n_control=1, n_ad=1, shape=(32, 32), seed=3))
    s_hard = _bytes(make_demo_slices(tmp_path / "s_hard", n_control=1, n_ad=1, shape=(32, 32), seed=3, difficulty=1))
    s_again = _bytes(make_demo_slices(tmp_path / "s_again", n_control=1, n_ad=1, shape=(32, 32), seed=3, difficulty=1))
    assert s_hard == s_again and all(s_hard[k] != s_easy[k] for k in s_hard)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_difficulty_outside_zero_to_one_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="difficulty"):
        make_demo_cohort(tmp_path / "c", difficulty=bad, **SMALL)
    with pytest.raises(ValueError, match="difficulty"):
        make_demo_slices(tmp_path / "s", n_control=1, n_ad=1, shape=(16, 16), difficulty=bad)
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists()  # refused before writing


def _cohort_stats(root, difficulty):
    """Per subject: mean of its brain voxels, and the mean of a central region around the
    ventricles relative to the scan's 99th percentile; 8 CN and 8 AD at 16^3, seed 0."""
    cohort = make_demo_cohort(root, n_control=8, n_ad=8, shape=(16, 16, 16), seed=0, difficulty=difficulty)
    stats = {"CN": [], "AD": []}
    for item in cohort:
        x, affine, _ = load_scan(item.path)
        top = np.percentile(x, 99)
        brain = x > 0.2 * top
        central = np.linalg.norm(world_grid(x.shape, affine) - VENTRICLE_CENTRE_MM, axis=-1) < 20
        stats[item.label].append((float(x[brain].mean()), float(x[central].mean() / top)))
    return {label: np.array(rows) for label, rows in stats.items()}


def test_hard_cohort_varies_more_in_intensity_and_separates_ad_less(tmp_path):
    # Measured over seeds 0-24: the spread (coefficient of variation across the 16 subjects) of
    # the per-scan brain mean grows 1.5-3.5x from difficulty 0 to 1 (seed 0: 3.3x), and the CN - AD
    # gap of the central ventricle region's intensity shrinks to at most 0.56x (seed 0: below 0).
    easy, hard = _cohort_stats(tmp_path / "easy", 0.0), _cohort_stats(tmp_path / "hard", 1.0)

    def spread(stats):
        means = np.concatenate([stats["CN"][:, 0], stats["AD"][:, 0]])
        return means.std() / means.mean()

    def ventricle_gap(stats):  # AD's enlarged ventricles make the centre darker
        return stats["CN"][:, 1].mean() - stats["AD"][:, 1].mean()

    assert spread(hard) > 1.4 * spread(easy), (spread(easy), spread(hard))
    assert ventricle_gap(easy) > 0.1, ventricle_gap(easy)
    assert ventricle_gap(hard) < 0.7 * ventricle_gap(easy), (ventricle_gap(easy), ventricle_gap(hard))


@pytest.mark.parametrize("difficulty", [0.0, 0.6])
def test_counterfactual_truth_is_the_same_subject_with_the_ad_effect(tmp_path, difficulty):
    # The ground truth of a counterfactual: CN subject k again, with the AD effect and nothing else
    # changed. It differs from its source (more CSF by the ventricles) far less than two subjects do.
    cohort = make_demo_cohort(tmp_path / "c", n_control=3, n_ad=0, seed=4, difficulty=difficulty)
    truth = make_demo_counterfactuals(tmp_path / "t", range(3), seed=4, difficulty=difficulty)
    assert [i.label for i in truth] == ["AD"] * 3 and truth.items[1].path.name == "CNtoAD_001.nii.gz"

    def dark_near_ventricles(path):
        x, world = _normalised(path)
        return int(((x < 0.45) & (np.linalg.norm(world - VENTRICLE_CENTRE_MM, axis=-1) < 20)).sum())

    sources = [load_scan(i.path)[0] for i in cohort]
    twins = [load_scan(i.path)[0] for i in truth]
    rms = lambda a, b: float(np.sqrt(((a - b) ** 2).mean()))
    for k in range(3):
        assert 0 < rms(sources[k], twins[k]) < 0.5 * rms(sources[k], sources[(k + 1) % 3])
        assert dark_near_ventricles(truth.items[k].path) > dark_near_ventricles(cohort.items[k].path)
    # rendering the truth draws nothing from the subjects' own streams: the cohort is unchanged
    again = make_demo_cohort(tmp_path / "again", n_control=3, n_ad=0, seed=4, difficulty=difficulty)
    assert all(a.path.read_bytes() == b.path.read_bytes() for a, b in zip(again, cohort))
