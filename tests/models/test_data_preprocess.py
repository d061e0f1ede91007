"""The MONAI preprocessing chain, its output space, and the on-disk tensor cache."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from models.data import (
    CohortError,
    LoadScan,
    PreprocessConfig,
    ScanError,
    build_transforms,
    load_tensors,
    make_dataset,
    preprocess,
    read_cohort,
    target_affine,
    write_scan,
)

LPS = np.array([[-2.0, 0, 0, 30], [0, -2.0, 0, 30], [0, 0, 2.5, -20], [0, 0, 0, 1]])
CFG = PreprocessConfig(target_spacing=4.0, target_shape=16)


def head(shape=(24, 24, 20), seed=0):
    """A bright noisy block (the 'head') inside a dim, noisy background."""
    rng = np.random.default_rng(seed)
    data = rng.random(shape, dtype=np.float32) * 5
    inner = (slice(4, -4), slice(5, -5), slice(3, -3))
    data[inner] += 100 + rng.random(data[inner].shape, dtype=np.float32) * 50
    return data


@pytest.fixture
def cohort(tmp_path):
    for label, n in (("CN", 3), ("AD", 2)):
        for i in range(n):
            write_scan(tmp_path / "cohort" / label / f"{i}.nii.gz", head(seed=i), LPS)
    return read_cohort(tmp_path / "cohort")


def test_config_broadcasts_and_validates():
    assert CFG.target_spacing == (4.0, 4.0, 4.0) and CFG.target_shape == (16, 16, 16)
    two_d = PreprocessConfig(spatial_dims=2)
    # 2-D images keep their frame, size and grey levels (issue 25)
    assert two_d.target_shape is None and two_d.target_spacing is None
    assert not two_d.crop_foreground and two_d.intensity_scale == "cohort"
    assert CFG.crop_foreground and CFG.intensity_scale == "scan"
    assert two_d.output_spacing == (1.0, 1.0)
    assert PreprocessConfig(spatial_dims=2, target_spacing=0.5).target_spacing == (0.5, 0.5)
    assert PreprocessConfig.model_validate_json(CFG.model_dump_json()) == CFG
    for bad in ({"target_shape": (16, 16)}, {"target_spacing": (1.0, -1.0, 1.0)},
                {"lower_percentile": 99, "upper_percentile": 1}, {"spatial_dims": 4},
                {"colour": True}):
        with pytest.raises(pydantic.ValidationError):
            PreprocessConfig(**bad)


def test_target_affine_is_ras_at_target_spacing_and_centred():
    affine = target_affine(CFG)
    np.testing.assert_allclose(affine[:3, :3], np.diag([4.0, 4.0, 4.0]))
    np.testing.assert_allclose(affine @ [7.5, 7.5, 7.5, 1], [0, 0, 0, 1])
    flat = target_affine(PreprocessConfig(spatial_dims=2, target_spacing=(1.0, 2.0),
                                          target_shape=(8, 4)))
    np.testing.assert_allclose(flat @ [3.5, 1.5, 0, 1], [0, 0, 0, 1])


def test_chain_output_shape_space_and_intensity(tmp_path):
    path = write_scan(tmp_path / "s.nii.gz", head(), LPS)
    out = build_transforms(CFG)(LoadScan(3)(path))
    assert out.shape == (1, 16, 16, 16) and out.dtype == torch.float32
    np.testing.assert_allclose(np.asarray(out.affine)[:3, :3], target_affine(CFG)[:3, :3])
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_orientation_flips_lps_axes_to_ras(tmp_path):
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None] + 10, (16, 16, 16))
    path = write_scan(tmp_path / "ramp.nii", ramp, LPS)  # array x grows towards patient left
    cfg = PreprocessConfig(target_spacing=(2.0, 2.0, 2.5), target_shape=16, crop_foreground=False,
                           lower_percentile=0, upper_percentile=100)
    profile = build_transforms(cfg)(LoadScan(3)(path))[0, :, 8, 8]
    assert profile[0] > profile[-1]  # RAS: array x now grows towards the right, the ramp falls
    np.testing.assert_allclose(profile.numpy(), np.linspace(1, 0, 16), atol=1e-5)


def test_crop_foreground_keeps_the_head_and_drops_background(tmp_path):
    data = np.random.default_rng(0).random((48, 48, 48), dtype=np.float32) * 5
    data[2:10, 30:42, 36:44] = 200  # off-centre: a plain centre crop would miss it
    path = write_scan(tmp_path / "small_head.nii.gz", data, np.eye(4))
    cfg = {"target_spacing": 1.0, "target_shape": 16, "lower_percentile": 0,
           "upper_percentile": 100}
    cropped = build_transforms(PreprocessConfig(**cfg))(LoadScan(3)(path))
    whole = build_transforms(PreprocessConfig(**cfg, crop_foreground=False))(LoadScan(3)(path))
    assert int((cropped > 0.5).sum()) == 8 * 12 * 8  # all of the head, and only the head
    centre = [7.5, 7.5, 7.5, 1.0]
    np.testing.assert_allclose((np.asarray(cropped.affine) @ centre)[:3], [5.5, 35.5, 39.5], atol=1)
    np.testing.assert_allclose((np.asarray(whole.affine) @ centre)[:3], [23.5] * 3, atol=1)


def test_load_tensors_stacks_the_cohort(cohort, tmp_path):
    x = load_tensors(cohort, CFG, cache_dir=tmp_path / "cache")
    assert type(x) is torch.Tensor and x.shape == (5, 1, 16, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert load_tensors(cohort, CFG, label="AD").shape == (2, 1, 16, 16, 16)
    item = make_dataset(cohort, CFG, cache_dir=None, label="CN")[0]
    np.testing.assert_allclose(np.asarray(item.affine)[:3, :3], np.diag([4.0] * 3))


def test_cache_is_reused_and_refreshed_when_a_scan_changes(cohort, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_tensors(cohort, CFG, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 5

    opened = []
    real_load_scan = preprocess.load_scan

    def counting_load_scan(path, spatial_dims=None, nan_to_zero=False):
        opened.append(path)
        return real_load_scan(path, spatial_dims, nan_to_zero)

    monkeypatch.setattr(preprocess, "load_scan", counting_load_scan)
    again = load_tensors(cohort, CFG, cache_dir=cache)
    assert opened == []  # every tensor came from the cache
    torch.testing.assert_close(again, first)

    changed = cohort.items[0].path
    write_scan(changed, head(shape=(24, 24, 22), seed=9), LPS)  # new size, so a new stamp
    load_tensors(cohort, CFG, cache_dir=cache)
    assert [str(p) for p in opened] == [str(changed)]
    assert len(list(cache.glob("*.pt"))) == 6

    other_cfg = PreprocessConfig(target_spacing=4.0, target_shape=16, upper_percentile=95)
    load_tensors(cohort, other_cfg, cache_dir=cache)
    assert len(opened) == 6  # a different config never reads stale tensors


def test_worker_processes_give_the_same_tensors(cohort):
    torch.testing.assert_close(load_tensors(cohort, CFG, num_workers=1, batch_size=2),
                               load_tensors(cohort, CFG))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_scan_surfaces_as_scan_error(cohort, tmp_path, workers):
    bad = cohort.items[1].path
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(ScanError) as info:
        load_tensors(cohort, CFG, cache_dir=tmp_path / "cache", num_workers=workers)
    assert info.value.path == bad and "truncated" in str(info.value)


def test_selection_and_dimension_mismatches(cohort):
    with pytest.raises(CohortError, match="no scans of class 'MCI'"):
        make_dataset(cohort, CFG, None, label="MCI")
    with pytest.raises(CohortError, match="expects 2-D"):
        make_dataset(cohort, PreprocessConfig(spatial_dims=2, target_shape=16), None)


def test_png_cohort_resized_to_target_shape(tmp_path):
    for label, n in (("NonDemented", 3), ("MildDemented", 1)):
        (tmp_path / label).mkdir()
        for i in range(n):
            pixels = np.zeros((30, 26), np.uint8)
            pixels[5:25, 4:22] = np.random.default_rng(i).integers(60, 255, (20, 18))
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    cohort = read_cohort(tmp_path)
    cfg = PreprocessConfig(spatial_dims=2, target_spacing=None, target_shape=(16, 16))
    x = load_tensors(cohort, cfg, cache_dir=tmp_path / ".cache")
    # the 8-bit range is the cohort's one scale: area averaging keeps the peak below 255 / 255
    assert x.shape == (4, 1, 16, 16) and float(x.min()) == 0.0 and 0.8 < float(x.max()) < 1.0
    with_spacing = PreprocessConfig(spatial_dims=2, target_spacing=2.0, target_shape=(16, 16))
    assert load_tensors(cohort, with_spacing).shape == (4, 1, 16, 16)
