"""One lab cannot make ingest read another lab's scans (issue 10, item 1).

The victim is lab-a's real uploaded dataset (the session's ``dataset``); the attacker is lab-b,
over HTTP, then straight at the real worker (defence in depth: whoever submits the job).
"""

from __future__ import annotations

import io
import stat
import uuid
import zipfile
from pathlib import Path

import pytest

from .test_bad_requests import _store_entries, _upload, _zip

pytestmark = pytest.mark.slow


def _victim_scan(deployment, dataset) -> Path:
    data = deployment.data_dir / "artifacts" / "datasets" / dataset["id"] / "data"
    return min(data.glob("AD/*.nii.gz"))


def _cohort_with_manifest(demo_cohort: Path, rows: list[str]) -> dict[str, bytes]:
    """lab-b's own real scans (so the rest of the cohort is valid) and a manifest that adds rows."""
    members = {f"CN/{p.name}": p.read_bytes() for p in sorted(demo_cohort.glob("CN/*.nii.gz"))[:2]}
    members.update({f"AD/{p.name}": p.read_bytes() for p in sorted(demo_cohort.glob("AD/*.nii.gz"))[:2]})
    lines = ["path,label"] + [f"{name},{name.split('/')[0]}" for name in members] + rows
    members["manifest.csv"] = "\n".join(lines).encode()
    return members


def test_a_manifest_cannot_reach_outside_its_archive(deployment, dataset, demo_cohort):
    victim = _victim_scan(deployment, dataset)
    relative_climb = "../" * 12 + str(victim).lstrip("/")
    before = _store_entries(deployment)
    with deployment.client("lab-b") as c:
        owned = c.get("/v1/datasets").json()["total"]
        for row, shown in ((f"{victim},AD", str(victim)), (f"{relative_climb},AD", relative_climb)):
            r = _upload(c, _zip(_cohort_with_manifest(demo_cohort, [row])), wait=60)
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert "manifest.csv, row 6" in detail and "outside the archive" in detail, detail
            assert shown[:60] in detail  # names the row's path as the client sent it
        # A symlink member pointing at the victim's scan: refused before anything is stored.
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in _cohort_with_manifest(demo_cohort, []).items():
                zf.writestr(name, data)
            link = zipfile.ZipInfo("AD/stolen.nii.gz")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, str(victim))
        r = _upload(c, buf.getvalue(), wait=60)
        assert r.status_code == 422 and "link" in r.json()["detail"], r.text
        assert c.get("/v1/datasets").json()["total"] == owned  # nothing added, ready or failed
    assert _store_entries(deployment) == before


def test_the_worker_refuses_too_whoever_submits_the_job(deployment, dataset, tmp_path):
    """Uploads that skip the gateway's check (written into the store directly) and server paths
    are stopped by the worker before it reads a scan."""
    import workers

    victim = _victim_scan(deployment, dataset)
    store = workers.default_store()

    def upload(build) -> str:
        upload_id = f"dataset-upload-{uuid.uuid4().hex}"
        with store.writer("dataset", upload_id) as payload:
            (payload / "CN").mkdir()
            build(payload)
        return upload_id

    absolute = upload(lambda p: (p / "manifest.csv").write_text(f"path,label\n{victim},AD\n"))
    climbing = upload(lambda p: (p / "manifest.csv").write_text(
        "path,label\n" + "../" * 12 + str(victim).lstrip("/") + ",AD\n"))
    linked = upload(lambda p: (p / "CN" / "stolen.nii.gz").symlink_to(victim))
    listing = tmp_path / "cohort.csv"  # an operator's CSV on the server naming a store file
    listing.write_text(f"path,label\n{victim},AD\n")
    cases = [
        ({"source": absolute}, "lab-b", "manifest.csv, row 2: path"),
        ({"source": climbing}, "lab-b", "manifest.csv, row 2: path"),
        ({"source": linked}, "lab-b", "'CN/stolen.nii.gz' is a link to outside the archive"),
        ({"source": str(victim.parent.parent)}, "lab-b", "a lab may ingest only its own uploads"),
        ({"source": str(victim.parent.parent)}, "local", "paths inside the artifact store are not accepted"),
        ({"source": str(listing)}, "local", f"scan {victim.name!r} lies inside the artifact store"),
    ]
    for params, owner, message in cases:
        job = workers.wait(workers.submit("ingest", params, owner=owner).id, timeout=60)
        assert job.state == "failed" and message in job.error, (params, owner, job.error)
        assert not store.exists(f"dataset-{job.id}")
