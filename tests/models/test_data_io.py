"""Reading and writing single scans: real files on disk, read back by nibabel and MONAI."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from PIL import Image

from models.data import ScanError, load_scan, scan_format, write_scan

from .dicom_series import write_dicom_series

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")

LPS_2MM = np.array([[-2.0, 0, 0, 10], [0, -2.0, 0, 20], [0, 0, 2.5, -5], [0, 0, 0, 1]])


def volume(shape=(16, 16, 16), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32) * 100


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
def test_write_then_read_with_nibabel_monai_and_load_scan(tmp_path, name):
    data = volume()
    path = write_scan(tmp_path / name, data, LPS_2MM)

    img = nib.load(path)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), data)
    np.testing.assert_allclose(img.affine, LPS_2MM)
    assert img.get_data_dtype() == np.float32

    monai_img = LoadImage(image_only=True)(str(path))
    np.testing.assert_array_equal(np.asarray(monai_img), data)

    ours, affine, meta = load_scan(path)
    np.testing.assert_array_equal(ours, data)
    np.testing.assert_allclose(affine, LPS_2MM)
    assert meta["axcodes"] == "LPS" and meta["spacing"] == (2.0, 2.0, 2.5)
    assert meta["shape"] == (16, 16, 16) and meta["format"] == "nifti"


def test_written_header_has_no_free_text_and_no_temp_files(tmp_path):
    path = write_scan(tmp_path / "out" / "s.nii.gz", volume(), np.eye(4))
    header = nib.load(path).header
    for field in ("descrip", "aux_file", "db_name", "intent_name"):
        assert header[field].item() == b"", field
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.nii.gz"]


def test_gzip_output_is_byte_identical_for_identical_input(tmp_path):
    a = write_scan(tmp_path / "a.nii.gz", volume(), np.eye(4)).read_bytes()
    b = write_scan(tmp_path / "b.nii.gz", volume(), np.eye(4)).read_bytes()
    assert a == b
    assert gzip.decompress(a)[344:348] == b"n+1\x00"  # single-file NIfTI-1 magic


def test_write_refuses_non_finite_and_non_nifti_names(tmp_path):
    bad = volume()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_scan(tmp_path / "x.nii.gz", bad, np.eye(4))
    with pytest.raises(ValueError, match="NIfTI"):
        write_scan(tmp_path / "x.png", volume(), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_mgz_is_read(tmp_path):
    data = volume((8, 9, 10))
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    path = tmp_path / "brain.mgz"
    nib.save(nib.MGHImage(data, affine), path)
    ours, aff, meta = load_scan(path)
    np.testing.assert_array_equal(ours, data)
    np.testing.assert_allclose(aff[:3, :3], affine[:3, :3])
    assert meta["format"] == "mgh" and meta["spacing"] == (1.0, 1.5, 2.0)


def test_png_and_jpeg_slices_match_monai(tmp_path):
    pixels = (np.arange(12 * 20).reshape(12, 20) % 256).astype(np.uint8)  # 12 rows, 20 columns
    Image.fromarray(pixels).save(tmp_path / "s.png")
    ours, affine, meta = load_scan(tmp_path / "s.png")
    assert ours.shape == (20, 12) and meta["format"] == "image"
    by_monai = LoadImage(image_only=True)(str(tmp_path / "s.png"))
    np.testing.assert_array_equal(ours, np.asarray(by_monai))
    np.testing.assert_array_equal(affine, np.eye(4))
    assert meta["spacing"] == (1.0, 1.0)

    rgb = np.stack([pixels] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    grey, _, _ = load_scan(tmp_path / "c.jpg", spatial_dims=2)
    assert grey.shape == (20, 12) and np.abs(grey - pixels.T).mean() < 3


def test_dicom_series_folder_is_one_scan(tmp_path):
    vol = np.arange(8 * 6 * 5).reshape(8, 6, 5)
    folder = write_dicom_series(tmp_path / "series", vol, spacing=(1.0, 1.0, 2.0))
    assert scan_format(folder) == "dicom"
    data, affine, meta = load_scan(folder)
    np.testing.assert_array_equal(data, vol)
    assert meta["spacing"] == (1.0, 1.0, 2.0) and meta["axcodes"] == "LPS"
    np.testing.assert_allclose(affine[:3, 3], [0, 0, 0])


def test_singleton_fourth_dimension_is_squeezed(tmp_path):
    path = tmp_path / "one_volume.nii.gz"
    nib.save(nib.Nifti1Image(volume((6, 7, 8, 1)), np.eye(4)), path)
    assert load_scan(path)[0].shape == (6, 7, 8)


def _nifti_bytes(data):
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)).to_bytes()


BAD_INPUTS = {
    "truncated.nii.gz": (lambda: gzip.compress(_nifti_bytes(volume()))[:900], "truncated"),
    "truncated.nii": (lambda: _nifti_bytes(volume())[:5000], "truncated"),
    "notes.nii": (lambda: b"patient notes, not an image\n" * 20, "not a valid NIfTI"),
    "notes.nii.gz": (lambda: b"patient notes, not an image\n" * 20, "not a valid NIfTI"),
    "empty.nii.gz": (lambda: b"", "empty file"),
    "series.nii": (lambda: _nifti_bytes(volume((6, 6, 6, 3))), "4-D"),
    "nan.nii": (lambda: _nifti_bytes(np.where(volume() > 50, np.nan, 1.0)), "NaN or infinite"),
    "inf.nii": (lambda: _nifti_bytes(np.where(volume() > 99, np.inf, 1.0)), "NaN or infinite"),
    "nothing.nii": (lambda: _nifti_bytes(np.zeros((0, 4, 4))), "no voxels"),
    "scan.txt": (lambda: b"1 2 3", "not a supported scan type"),
    "cut.png": (lambda: _png_bytes()[:60], "truncated or corrupt image"),
    "fake.png": (lambda: b"GIF89a not really", "not a PNG/JPEG image"),
}


def _png_bytes():
    import io

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_scan_error_naming_file_and_problem(tmp_path, name):
    make, problem = BAD_INPUTS[name]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ScanError) as info:
        load_scan(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert problem in message, message
    assert info.value.path == path and "\n" not in message


def test_wrong_dimensionality_for_the_caller(tmp_path):
    write_scan(tmp_path / "vol.nii.gz", volume((8, 8, 8)), np.eye(4))
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "slice.png")
    with pytest.raises(ScanError, match="expected a 2-D slice"):
        load_scan(tmp_path / "vol.nii.gz", spatial_dims=2)
    with pytest.raises(ScanError, match="expected a 3-D scan"):
        load_scan(tmp_path / "slice.png", spatial_dims=3)
    write_scan(tmp_path / "thin.nii", volume((8, 8, 1)), np.eye(4))
    assert load_scan(tmp_path / "thin.nii", spatial_dims=2)[0].shape == (8, 8)


def test_missing_and_broken_dicom(tmp_path):
    with pytest.raises(ScanError, match="file not found"):
        load_scan(tmp_path / "absent.nii.gz")
    folder = tmp_path / "broken_series"
    folder.mkdir()
    write_dicom_series(folder, np.zeros((4, 4, 3)))
    (folder / "im002.dcm").write_bytes(b"\x00" * 64)
    with pytest.raises(ScanError, match="not a readable DICOM file") as info:
        load_scan(folder)
    assert info.value.path == folder / "im002.dcm"
    empty = tmp_path / "empty_series"
    empty.mkdir()
    with pytest.raises(ScanError, match="not a supported scan type"):
        load_scan(empty)  # a folder without .dcm files is no scan at all
