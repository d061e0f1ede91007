"""Issue 25 over HTTP: an unknown split value is named at ingest, and quality control is a
setting of the augmentation's config (``qc``), which the submit-time check respects."""

from __future__ import annotations

import gzip
import io
import zipfile

import pytest

from .conftest import zip_folder
from .test_bad_requests import _upload, _zip

pytestmark = pytest.mark.slow


def _members(demo_cohort) -> dict[str, bytes]:
    good = zipfile.ZipFile(io.BytesIO(zip_folder(demo_cohort)))
    return {n: good.read(n) for n in good.namelist()}


def test_an_unknown_split_value_is_422_naming_it(deployment, demo_cohort):
    members = {n.removeprefix("demo/"): data for n, data in _members(demo_cohort).items()}
    scans = sorted(n for n in members if n.endswith(".nii.gz"))
    members["manifest.csv"] = "\n".join(
        ["path,label,split"] + [f"{n},{n.split('/')[0]},{'tset' if k == 1 else 'train'}"
                                for k, n in enumerate(scans)]).encode()
    with deployment.client() as c:
        r = _upload(c, _zip(members), wait=60)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "unknown split value 'tset'" in detail and "train, val, test" in detail, detail
        assert str(deployment.data_dir) not in detail


def test_qc_settings_in_the_config_steer_the_submit_time_check(deployment, demo_cohort):
    import nibabel as nib
    import numpy as np

    members = _members(demo_cohort)
    blank = nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.diag([12.0, 12.0, 12.0, 1.0]))
    members["demo/AD/AD_blank.nii.gz"] = gzip.compress(blank.to_bytes())
    with deployment.client() as c:
        r = _upload(c, _zip(members), wait=60)
        assert r.status_code == 201, r.text
        dataset = r.json()["id"]
        r = c.post("/v1/augmentations", json={"dataset": dataset, "target": "MCI=4"})
        assert r.status_code == 422 and "constant intensity" in r.json()["detail"], r.text
        assert "qc: {skip_bad_scans: true}" in r.json()["detail"]  # the one line names the setting
        # With skip_bad_scans the quality check lets it through: the next check (an unknown class
        # in the target) answers, so no job is started here.
        r = c.post("/v1/augmentations", json={"dataset": dataset, "target": "MCI=4",
                                              "config": {"qc": {"skip_bad_scans": True}}})
        assert r.status_code == 422 and "MCI" in r.json()["detail"], r.text
        assert "constant intensity" not in r.json()["detail"]
        r = c.post("/v1/augmentations", json={"dataset": dataset, "config": {"qc": {"min_forground": 0.1}}})
        assert r.status_code == 422 and "min_forground" in r.json()["detail"], r.text
