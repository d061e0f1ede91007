"""Issue 25, item 1: one intensity scale for a 2-D cohort, the native size, and PNG out at the
input's bit depth (models/data/settle.py, models.data.io.write_png)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.data import (
    CohortError,
    PreprocessConfig,
    load_tensors,
    output_format,
    read_cohort,
    settle_preprocess,
    target_affine,
    write_scan,
)


def _pngs(root, images: dict[str, list[np.ndarray]]):
    for label, arrays in images.items():
        (root / label).mkdir(parents=True)
        for k, array in enumerate(arrays):
            Image.fromarray(array).save(root / label / f"{k}.png")
    return read_cohort(root)


def test_16_bit_pngs_round_trip_through_the_cohort_scale(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 65536, size=(20, 13), dtype=np.uint16) for _ in range(4)]
    arrays[0][0, 0], arrays[0][1, 0] = 0, 65535
    cohort = _pngs(tmp_path / "c", {"a": arrays[:2], "b": arrays[2:]})
    pre = settle_preprocess(PreprocessConfig(spatial_dims=2), cohort)
    # the native size as array axes (x, y) = (width, height), and the 16-bit range
    assert pre.target_shape == (13, 20) and pre.intensity_range == (0.0, 65535.0) and pre.image_bits == 16
    x = load_tensors(cohort, pre)
    out = output_format(pre, target_affine(pre))
    assert out.suffix == ".png" and out.bits == 16
    for k, (item, scan) in enumerate(zip(cohort, x)):
        written = out.write(tmp_path / "out" / f"{k}.png", scan[0].numpy())
        with Image.open(written) as back, Image.open(item.path) as given:
            assert back.mode.startswith("I;16") and back.size == given.size == (13, 20)
            np.testing.assert_array_equal(np.asarray(back), np.asarray(given))


def test_one_scale_for_the_whole_cohort_not_one_per_image(tmp_path):
    """A dim image stays dim: per-image scaling would stretch it to the full range."""
    dim = np.full((16, 16), 10, np.uint8)
    dim[:4, :4] = 60
    bright = np.full((16, 16), 10, np.uint8)
    bright[:4, :4] = 250
    cohort = _pngs(tmp_path / "c", {"a": [dim], "b": [bright]})
    x = load_tensors(cohort, PreprocessConfig(spatial_dims=2))
    assert x.shape == (2, 1, 16, 16)
    assert float(x[0].max()) == pytest.approx(60 / 255) and float(x[1].max()) == pytest.approx(250 / 255)
    assert float(x[0].min()) == pytest.approx(10 / 255)
    # the frame is kept: no crop to the 4 x 4 block, which stays in the corner
    assert float(x[0, 0, :4, :4].mean()) == pytest.approx(60 / 255)


def test_2d_nifti_slices_share_the_train_rows_percentiles_and_stay_nifti(tmp_path):
    rng = np.random.default_rng(1)
    for label, scale in (("a", 1.0), ("a", 3.0), ("b", 2.0)):
        k = len(list((tmp_path / "c" / label).glob("*"))) if (tmp_path / "c" / label).exists() else 0
        write_scan(tmp_path / "c" / label / f"{k}.nii.gz", scale * rng.random((12, 12)), np.eye(4))
    cohort = read_cohort(tmp_path / "c")
    only_first = settle_preprocess(PreprocessConfig(spatial_dims=2), cohort, rows=[0])
    every = settle_preprocess(PreprocessConfig(spatial_dims=2), cohort)
    assert only_first.intensity_range[1] < every.intensity_range[1]  # train rows only shape the scale
    assert only_first.target_shape == (12, 12) and only_first.image_bits is None
    assert output_format(every, target_affine(every)).suffix == ".nii.gz"


def test_volumes_keep_per_scan_scaling_and_nifti():
    pre = PreprocessConfig()
    assert pre.intensity_scale == "scan" and pre.crop_foreground and pre.target_shape == (32, 32, 32)


def test_native_size_with_resampling_is_refused(tmp_path):
    cohort = _pngs(tmp_path / "c", {"a": [np.zeros((8, 8), np.uint8) + 9], "b": [np.zeros((8, 8), np.uint8) + 9]})
    with pytest.raises(CohortError, match="target_spacing"):
        settle_preprocess(PreprocessConfig(spatial_dims=2, target_spacing=1.0), cohort)


def test_a_settled_config_is_kept_as_it_is(tmp_path):
    cohort = _pngs(tmp_path / "c", {"a": [np.zeros((8, 8), np.uint8)], "b": [np.zeros((8, 8), np.uint8)]})
    given = PreprocessConfig(spatial_dims=2, target_shape=(4, 4), intensity_range=(0.0, 100.0), image_bits=8)
    assert settle_preprocess(given, cohort) is given


def test_inspecting_images_of_different_sizes_warns_instead_of_failing(tmp_path):
    from models.data import summarize

    block = np.zeros((16, 16), np.uint8)
    block[:8, :8] = 200
    wide = np.zeros((16, 20), np.uint8)
    wide[:8, :8] = 200
    cohort = _pngs(tmp_path / "c", {"a": [block, block], "b": [wide, block]})
    summary = summarize(cohort)
    assert summary["quality"] == [] or all("differ in size" not in q["problem"] for q in summary["quality"])
    assert any("differ in size" in w and "target_shape" in w for w in summary["warnings"])
