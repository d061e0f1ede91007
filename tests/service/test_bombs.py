"""Decompression bombs are refused from archive headers before anything is inflated to disk
(issue 10, item 9); real scans, compressed about 5:1, still pass."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from service.errors import ApiError
from service.uploads import Limits, unpack

ROOMY = Limits(max_upload_bytes=1 << 30, max_files=100, max_unpacked_bytes=1 << 40)  # ratio only


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _declaring(size: int) -> bytes:
    """A 2 KB zip whose only member declares ``size`` unpacked bytes (as a 2 GiB bomb's does)."""
    raw = bytearray(_zip({"CN/a.nii": bytes(100_000)}))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        at = raw.find(signature)
        raw[at + offset:at + offset + 4] = struct.pack("<I", size)
    return bytes(raw)


@pytest.mark.parametrize("body", [_declaring((2 << 30) - 1), _zip({"CN/a.nii": bytes(6 << 20)})],
                         ids=["declares-2GiB", "6MiB-of-zeros"])
def test_a_zip_bomb_is_refused_from_its_headers_before_extraction(tmp_path, body):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(body)
    with pytest.raises(ApiError, match="MCVAE_MAX_COMPRESSION_RATIO") as err:
        unpack(archive, tmp_path / "out", ROOMY)
    assert err.value.status == 413 and "archive member 'CN/a.nii'" in err.value.detail
    assert _files(tmp_path / "out") == []  # not one byte inflated to disk


def test_a_tar_gz_bomb_is_refused_before_its_member_is_extracted(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("CN/a.nii")
        info.size = 6 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(ApiError, match="MCVAE_MAX_COMPRESSION_RATIO") as err:
        unpack(archive, tmp_path / "out", ROOMY)
    assert err.value.status == 413
    assert _files(tmp_path / "out") == []


def test_uncompressed_real_scans_in_a_zip_are_not_mistaken_for_bombs(tmp_path):
    import nilearn

    template = next((Path(nilearn.__file__).parent / "datasets" / "data").rglob("mni_icbm152_t1_*.nii.gz"))
    archive = tmp_path / "scans.zip"
    archive.write_bytes(_zip({"CN/mni.nii": gzip.decompress(template.read_bytes()), "AD/x.nii": b"1"}))
    root = unpack(archive, tmp_path / "out", ROOMY)  # 8.7 MB from about 1.6 MB: 5.3:1
    assert (root / "CN" / "mni.nii").stat().st_size > 8_000_000


@pytest.mark.slow
def test_a_zip_bomb_upload_is_413_and_leaves_nothing(deployment):
    from .test_bad_requests import _store_entries

    before = _store_entries(deployment)
    bomb = _zip({"CN/zeros.nii": bytes(6 << 20), "AD/b.nii": b"1"})  # under the 8 MiB unpacked limit
    with deployment.client() as c:
        r = c.post("/v1/datasets", files={"file": ("cohort.zip", bomb, "application/zip")})
    assert r.status_code == 413, r.text
    assert "decompression bomb" in r.json()["detail"]
    assert _store_entries(deployment) == before


@pytest.mark.slow
def test_a_nifti_bomb_in_an_upload_is_422_naming_the_file(deployment, demo_cohort, tmp_path):
    from tests.models.test_scan_limits import _zeros_bomb

    from .conftest import zip_folder

    bomb = tmp_path / "bomb.nii.gz"
    _zeros_bomb(bomb)
    good = zipfile.ZipFile(io.BytesIO(zip_folder(demo_cohort)))
    members = {n: good.read(n) for n in good.namelist()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # stored, not deflated: the archive's ratio is ~1:1,
        for name, data in members.items():  # so the gateway passes it and the worker must judge
            zf.writestr(name, data)
        zf.write(bomb, "demo/AD/AD_bomb.nii.gz")
    with deployment.client() as c:
        started = time.monotonic()
        r = c.post("/v1/datasets", params={"wait": 60},
                   files={"file": ("cohort.zip", buf.getvalue(), "application/zip")})
    assert r.status_code == 422, r.text
    assert "AD/AD_bomb.nii.gz" in r.json()["detail"] and "MCVAE_MAX_SCAN_VOXELS" in r.json()["detail"]
    assert time.monotonic() - started < 30
