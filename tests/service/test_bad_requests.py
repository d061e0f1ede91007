"""Bad requests over HTTP: each gets its 4xx and a JSON message that names the problem, nothing
is left behind, and the service keeps serving."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile

import pytest

from .conftest import zip_folder

pytestmark = pytest.mark.slow


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _upload(c, body: bytes, **params):
    return c.post("/v1/datasets", params=params, files={"file": ("cohort.zip", body, "application/zip")})


def _store_entries(deployment) -> set[str]:
    root = deployment.data_dir / "artifacts"
    found = set()
    for kind in ("datasets", ".staging"):
        folder = root / kind
        if folder.is_dir():
            found |= {f"{kind}/{p.name}" for p in folder.iterdir()}
    return found


@pytest.fixture
def unchanged_store(deployment):
    """Nothing may be added to the artifact store (no partial upload, no staging debris)."""
    before = _store_entries(deployment)
    yield
    assert _store_entries(deployment) == before


def test_missing_or_wrong_key_is_401(deployment):
    with deployment.client(lab=None) as c:
        for path in ("/v1/datasets", "/v1/jobs", "/v1/models"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "API key" in r.json()["detail"]
        bad = c.get("/v1/jobs", headers={"Authorization": "Bearer mcvae_0000000000_" + "x" * 43})
        assert bad.status_code == 401 and bad.json()["detail"] == "invalid or revoked API key"
        ok = c.get("/v1/jobs", headers={"X-API-Key": deployment.keys["lab-a"]})
        assert ok.status_code == 200


def test_a_revoked_key_stops_working(deployment):
    from service import keys

    token = keys.create_key("lab-revoked")
    with deployment.client(lab=None, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/v1/jobs").status_code == 200
        assert keys.revoke_key(token.split("_")[1])
        assert c.get("/v1/jobs").status_code == 401
    assert "lab-revoked" not in [k.lab for k in keys.list_keys()]


@pytest.mark.usefixtures("unchanged_store")
def test_malformed_and_unsafe_archives_are_refused(deployment):
    slip = _zip({"demo/CN/a.nii.gz": b"x", "../../etc/evil.nii.gz": b"x"})
    absolute = _zip({"/tmp/abs.nii.gz": b"x"})
    truncated = _zip({"CN/a.nii.gz": os.urandom(5000)})[:-200]
    tar_link = io.BytesIO()
    with tarfile.open(fileobj=tar_link, mode="w:gz") as tf:
        link = tarfile.TarInfo("CN/escape.nii.gz")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    bomb = _zip({"CN/zeros.nii": bytes(20 << 20)})  # 20 MiB of zeros in ~20 KiB; limit is 8 MiB
    with deployment.client() as c:
        cases = [
            (slip, 422, "points outside the archive"),
            (absolute, 422, "absolute path"),
            (truncated, 422, "malformed zip archive"),
            (tar_link.getvalue(), 422, "link or special file"),
            (bomb, 413, "unpacks to more than"),
            (b"just some text, not an archive", 415, "not a .zip or .tar.gz"),
            (_zip({}), 422, "holds no files"),
        ]
        for body, status, message in cases:
            r = _upload(c, body)
            assert r.status_code == status, (message, r.text)
            assert message in r.json()["detail"], r.json()
            assert r.json()["request_id"] == r.headers["x-request-id"]
        assert c.get("/healthz").status_code == 200


@pytest.mark.usefixtures("unchanged_store")
def test_oversize_upload_is_413_declared_or_streamed(deployment):
    big = b"PK\x03\x04" + os.urandom(4 << 20)  # zip's magic: judged an archive, then too long
    with deployment.client() as c:
        r = c.post("/v1/datasets", content=big, headers={"Content-Type": "application/zip"})
        assert r.status_code == 413 and "MCVAE_MAX_UPLOAD_BYTES" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced on the bytes as they arrive
            for i in range(0, len(big), 1 << 16):
                yield big[i:i + (1 << 16)]

        r = c.post("/v1/datasets", content=chunks(), headers={"Content-Type": "application/zip"})
        assert r.status_code == 413
    with deployment.client() as c:
        assert c.get("/v1/datasets").status_code == 200


def test_a_scan_quality_control_would_refuse_makes_the_augmentation_422(deployment, demo_cohort):
    import gzip

    import nibabel as nib
    import numpy as np

    good = zipfile.ZipFile(io.BytesIO(zip_folder(demo_cohort)))
    members = {n: good.read(n) for n in good.namelist()}
    blank = nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.diag([12.0, 12.0, 12.0, 1.0]))
    members["demo/AD/AD_blank.nii.gz"] = gzip.compress(blank.to_bytes())
    with deployment.client() as c:
        r = _upload(c, _zip(members), wait=60)
        assert r.status_code == 201, r.text  # it reads fine: ingest keeps it and warns
        dataset = r.json()
        assert any("AD/AD_blank.nii.gz: constant intensity" in w for w in dataset["warnings"])
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "balance"})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "AD/AD_blank.nii.gz" in detail and "constant intensity" in detail
        assert str(deployment.data_dir) not in detail


def test_a_bad_scan_is_422_naming_the_file(deployment, demo_cohort):
    good = zipfile.ZipFile(io.BytesIO(zip_folder(demo_cohort)))
    members = {n: good.read(n) for n in good.namelist()}
    members["demo/AD/AD_broken.nii.gz"] = b"\x1f\x8b not really a scan"
    with deployment.client() as c:
        r = _upload(c, _zip(members), wait=60)
        assert r.status_code == 422, r.text
        assert "AD/AD_broken.nii.gz" in r.json()["detail"]
        assert str(deployment.data_dir) not in r.json()["detail"]
        assert r.json()["job_id"]
        assert all(d["state"] != "failed" for d in c.get("/v1/datasets").json()["items"])


def test_bad_job_requests_are_4xx_with_the_field_named(deployment, dataset):
    with deployment.client() as c:
        r = c.post("/v1/augmentations", json={"dataset": "dataset-nope"})
        assert r.status_code == 404 and "dataset-nope" in r.json()["detail"]
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": {"XX": 3}})
        assert r.status_code == 422 and "unknown class 'XX'" in r.json()["detail"]
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": 1000})
        assert r.status_code == 422 and r.json()["errors"] and "target" in r.json()["detail"]
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": {"AD": 10**6}})
        assert r.status_code == 422 and "exceeds the limit" in r.json()["detail"]
        # The config and the CLI's target syntax are checked at submit, not by a failed job later.
        jobs_before = len(c.get("/v1/jobs", params={"kind": "augment", "limit": 500}).json()["items"])
        for config, words in (({"bogus": 1}, ["config: bogus", "Extra inputs"]),
                              ({"pretrain_steps": "many"}, ["config: pretrain_steps", "integer"]),
                              ({"sampler": {"kind": "gibbs"}}, ["config: sampler.kind"]),
                              ({"near_copies": "sometimes"}, ["config: near_copies"]),
                              ({"fine_detail": "everything"}, ["config: fine_detail", "nearest"]),
                              ({"train": {"device": "cuda"}}, ["train.device"])):
            r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "config": config})
            assert r.status_code == 422, (config, r.text)
            assert all(w in r.json()["detail"] for w in words), r.json()["detail"]
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "AD=x"})
        assert r.status_code == 422 and "'AD=x' is not CLASS=COUNT" in r.json()["detail"]
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "MCI=4"})
        assert r.status_code == 422 and "unknown class 'MCI'" in r.json()["detail"]
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "500"})
        assert r.status_code == 422 and "ratio" in r.json()["detail"]
        assert len(c.get("/v1/jobs", params={"kind": "augment", "limit": 500}).json()["items"]) == jobs_before
        r = c.post("/v1/models", json={"dataset": dataset["id"], "label": "nope"})
        assert r.status_code == 422 and "no class 'nope'" in r.json()["detail"]
        r = c.post("/v1/models", json={"dataset": dataset["id"], "surprise": 1})
        assert r.status_code == 422 and "body.surprise" in r.json()["detail"]
        r = c.post("/v1/models", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "invalid"
        r = c.post("/v1/models/model-nope/samples", json={"n": 1})
        assert r.status_code == 404
        r = c.get("/v1/jobs/not-a-job")
        assert r.status_code == 404
        assert c.get("/healthz").status_code == 200


def test_request_ids_are_echoed_and_logs_are_json_without_names(deployment, caplog):
    import json
    import logging

    from service.logs import JsonFormatter

    def access_lines():
        lines = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records]
        return lines, [entry for entry in lines if entry["message"] == "request"]

    with deployment.client() as c, caplog.at_level(logging.INFO, logger="service"):
        r = c.post("/v1/datasets", headers={"X-Request-ID": "req-123"},
                   files={"file": ("Jane_Doe_1970.zip", _zip({"Jane_Doe/../x": b"1"}), "application/zip")})
        assert r.headers["x-request-id"] == "req-123" and r.json()["request_id"] == "req-123"
        deadline = time.monotonic() + 5  # the access line is written once the response is sent
        while not access_lines()[1] and time.monotonic() < deadline:
            time.sleep(0.05)
    lines, access = access_lines()
    assert access and access[-1]["request_id"] == "req-123" and access[-1]["status"] == 422
    assert access[-1]["route"] == "/v1/datasets"
    assert not any("Jane" in json.dumps(entry) for entry in lines)
