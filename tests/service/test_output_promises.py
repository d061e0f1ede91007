"""Issue 25 over HTTP: an augmentation short of synthetic scans ends ``partial`` (a warning event
with the counts, the result still downloadable); a class typo in the target gets "did you mean";
a folder's files sent in one form get the how-to; no data error shows a store path, and the NaN
message names the config setting, not the CLI's flag."""

from __future__ import annotations

import gzip
import io
import zipfile

import pytest

from tests.sse import read_sse

from .conftest import TINY_AUGMENT, zip_folder
from .test_bad_requests import _upload, _zip

pytestmark = pytest.mark.slow


def _members(demo_cohort) -> dict[str, bytes]:
    good = zipfile.ZipFile(io.BytesIO(zip_folder(demo_cohort)))
    return {n: good.read(n) for n in good.namelist()}


def test_an_augmentation_short_of_scans_ends_partial_with_the_counts(deployment, dataset):
    with deployment.client() as c:
        # counterfactual: one scan per CN train subject (6) of the 8 asked
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "AD=8", "config": {
            **TINY_AUGMENT, "generator": "counterfactual", "abduction": "mean"}})
        assert r.status_code == 202, r.text
        with c.stream("GET", r.json()["events_url"], timeout=600) as stream:
            events = read_sse(stream)
        assert events[-1][0] == "end" and events[-1][1]["state"] == "partial", events[-1]
        job = c.get(f"/v1/jobs/{r.json()['id']}").json()
        assert job["state"] == "partial" and job["progress"] == 1.0, job
        assert job["metrics"]["delivery"]["AD"]["requested"] == 8
        assert job["metrics"]["delivery"]["AD"]["delivered"] == 6 and job["metrics"]["partial"] is True
        warnings = [data["message"] for name, data in events if name == "progress" and data["level"] == "warning"]
        assert "delivered fewer synthetic scans than asked: AD 6 of 8 (2 short: one scan per source subject)" \
            in " | ".join(warnings), warnings
        augmentation = c.get(f"/v1/augmentations/{job['id']}").json()
        assert augmentation["state"] == "partial" and augmentation["synthetic_counts"]["AD"] == 6
        result = c.get(augmentation["result_url"])
        assert result.status_code == 200
        archive = zipfile.ZipFile(io.BytesIO(result.content))
        summary = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("report/summary.txt"))
        assert "synthetic scans asked -> delivered: AD 8 -> 6" in summary
        assert "synthetic-to-synthetic diversity: " in summary


def test_a_class_typo_in_the_target_gets_did_you_mean(deployment, dataset):
    with deployment.client() as c:
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "AF=3"})
        assert r.status_code == 422, r.text
        assert "unknown class 'AF'; did you mean 'AD'?" in r.json()["detail"]


def test_a_folder_sent_as_several_files_in_one_form_gets_the_how_to(deployment, demo_cohort):
    scans = sorted((demo_cohort / "AD").glob("*.nii.gz"))[:2]
    with deployment.client() as c:
        r = c.post("/v1/datasets", files=[("file", (f"AD/{p.name}", p.read_bytes(), "application/gzip"))
                                          for p in scans])
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert "more than one file" in detail and "zip -r cohort.zip cohort/" in detail, detail
        assert "manifest.csv" in detail


def test_data_errors_name_no_store_path_and_the_nan_setting_for_http(deployment, demo_cohort):
    import nibabel as nib
    import numpy as np

    members = _members(demo_cohort)
    nan = np.ones((16, 16, 16), np.float32)
    nan[0, 0, 0] = np.nan
    with_nan = dict(members)
    with_nan["demo/AD/AD_nan.nii.gz"] = gzip.compress(
        nib.Nifti1Image(nan, np.diag([12.0, 12.0, 12.0, 1.0])).to_bytes())
    cases = {
        "no scans": ({"notes/readme.txt": b"scans to follow"}, ["no scans found"]),
        "a bad scan": ({**members, "demo/AD/AD_broken.nii.gz": b"\x1f\x8b not a scan"}, ["AD/AD_broken.nii.gz"]),
        "a NaN scan": (with_nan, ["AD/AD_nan.nii.gz", "NaN", "set config preprocess: {nan_to_zero: true}"]),
        "a manifest naming a missing scan": ({"manifest.csv": b"path,label\nAD/gone.nii.gz,AD\nCN/x.nii.gz,CN\n"},
                                             ["gone.nii.gz"]),
    }
    with deployment.client() as c:
        for case, (archive, words) in cases.items():
            r = _upload(c, _zip(archive), wait=60)
            assert r.status_code == 422, (case, r.text)
            detail = r.json()["detail"]
            assert all(w in detail for w in words), (case, detail)
            for leak in (str(deployment.data_dir), "<store>", "/artifacts/", "--nan-to-zero"):
                assert leak not in detail, (case, detail)
            job = c.get(f"/v1/jobs/{r.json()['job_id']}").json()
            assert str(deployment.data_dir) not in (job["error"] or "") and "<store>" not in (job["error"] or "")


def test_minority_scans_of_one_subject_fail_the_augmentation_with_one_line(deployment, demo_cohort):
    import nibabel as nib
    import numpy as np

    members = {n: data for n, data in _members(demo_cohort).items() if "/AD/" not in n}
    image = nib.load(min((demo_cohort / "AD").glob("*.nii.gz")))
    data = np.asarray(image.dataobj, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 1e-3 * float(data.max()), data.shape).astype(np.float32)
    for name, scan in (("AD_a", data), ("AD_b", data + noise)):
        members[f"demo/AD/{name}.nii.gz"] = gzip.compress(nib.Nifti1Image(scan, image.affine).to_bytes())
    with deployment.client() as c:
        r = _upload(c, _zip(members), wait=60)
        assert r.status_code == 201, r.text
        r = c.post("/v1/augmentations", json={"dataset": r.json()["id"], "config": TINY_AUGMENT})
        assert r.status_code == 202, r.text
        with c.stream("GET", r.json()["events_url"], timeout=300) as stream:
            end = read_sse(stream)[-1][1]
        assert end["state"] == "failed", end
        assert "class 'AD': train scans AD_a.nii.gz and AD_b.nii.gz are near-duplicates" in end["message"]
        assert str(deployment.data_dir) not in end["message"]
