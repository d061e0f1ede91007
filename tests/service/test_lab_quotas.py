"""Per-lab quotas over real HTTP (issue 23, item 1): MCVAE_LAB_STORAGE_QUOTA on uploads and job
submits, MCVAE_LAB_MAX_ACTIVE_JOBS on new jobs; one lab at its quota leaves another untouched.

Each test serves a second gateway with the quota set, on the deployment's database, broker,
worker and artifact store, and uses labs of its own (so the figures are its own)."""

from __future__ import annotations

import io
import os
import random
import uuid
import zipfile

import httpx
import pytest

from .conftest import TINY_AUGMENT, serving, zip_folder

pytestmark = pytest.mark.slow


def _app(**settings):
    from service.app import create_app
    from service.settings import ServiceSettings

    return create_app(ServiceSettings(key_cache_seconds=0, **settings), configure_logs=False)


def _labs(*names: str, tag: str | None = None) -> dict[str, dict[str, str]]:
    """Fresh labs (no artifacts yet), each named ``<name>-<tag>``: name -> its key's header."""
    from service import keys

    tag = tag or uuid.uuid4().hex[:6]
    return {n: {"Authorization": f"Bearer {keys.create_key(f'{n}-{tag}')}"} for n in names}


def _upload(c: httpx.Client, headers: dict, body: bytes, **params) -> httpx.Response:
    return c.post("/v1/datasets", headers=headers, params=params,
                  files={"file": ("demo.zip", body, "application/zip")})


def _held(c: httpx.Client, headers: dict) -> int:
    r = c.get("/v1/usage", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["total_bytes"]


def _staging(deployment) -> set[str]:
    folder = deployment.data_dir / "artifacts" / ".staging"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _datasets(deployment) -> set[str]:
    folder = deployment.data_dir / "artifacts" / "datasets"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_an_upload_past_the_labs_storage_quota_is_413_and_leaves_everything_else(deployment, demo_cohort):
    archive = zip_folder(demo_cohort)
    labs = _labs("quota-a", "quota-b")
    a, b = labs["quota-a"], labs["quota-b"]
    # lab a fills most of its quota through the deployment's own gateway (no quota there)
    with httpx.Client(base_url=deployment.url, timeout=120) as c:
        first = _upload(c, a, archive, wait=60)
        assert first.status_code == 201, first.text
        held = _held(c, a)
    assert held > 0
    # room for half the archive more: not for a second copy of the cohort, but for one in a lab
    # that holds nothing
    quota = held + len(archive) // 2
    with serving(_app(lab_storage_quota=quota)) as url, httpx.Client(base_url=url, timeout=120) as c:
        stored_before, staging_before = _datasets(deployment), _staging(deployment)
        refused = _upload(c, a, archive, wait=60)
        assert refused.status_code == 413, refused.text
        body = refused.json()
        assert body["code"] == "quota_exceeded"
        assert "MCVAE_LAB_STORAGE_QUOTA" in body["detail"]
        assert f"storage quota of {quota} bytes" in body["detail"] and f"holds {held} bytes now" in body["detail"]
        assert "\n" not in body["detail"]

        # Refused while streaming too (chunked: no Content-Length to refuse it by), before the
        # archive passed the lab's room.
        def chunks():
            for start in range(0, len(archive), 512):
                yield archive[start:start + 512]

        streamed = c.post("/v1/datasets", headers={**a, "Content-Type": "application/zip"}, content=chunks())
        assert streamed.status_code == 413, streamed.text
        assert "MCVAE_LAB_STORAGE_QUOTA" in streamed.json()["detail"]

        # An archive that fits in the room but unpacks past it: refused from its headers, before
        # a member is written (4:1, well under MCVAE_MAX_COMPRESSION_RATIO).
        room = quota - held
        rng = random.Random(0)
        payload = "".join(rng.choice("ACGT") for _ in range(3 * room)).encode()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("cohort/AD/notes.txt", payload)
        assert len(buf.getvalue()) < room - 1024 < len(payload)
        unpacked = _upload(c, a, buf.getvalue())
        assert unpacked.status_code == 413, unpacked.text
        assert "MCVAE_LAB_STORAGE_QUOTA" in unpacked.json()["detail"]

        # nothing stored was lost, nothing was added, the staging holds nothing of the refusals
        assert _datasets(deployment) == stored_before
        assert _staging(deployment) <= staging_before
        assert _held(c, a) == held
        kept = c.get(f"/v1/datasets/{first.json()['id']}", headers=a)
        assert kept.status_code == 200 and kept.json()["state"] == "ready"
        assert c.get("/v1/datasets", headers=a).json()["total"] == 1

        # another lab, under the same quota setting, holds nothing yet: its upload goes through
        other = _upload(c, b, archive, wait=60)
        assert other.status_code == 201, other.text
        assert _held(c, b) > 0

        # deleting frees the quota: lab a may upload the cohort again
        assert c.delete(f"/v1/datasets/{first.json()['id']}", headers=a).status_code == 204
        assert _held(c, a) == 0
        again = _upload(c, a, archive, wait=60)
        assert again.status_code == 201, again.text


def test_a_job_past_the_labs_storage_quota_is_refused_at_submit(deployment, demo_cohort):
    archive = zip_folder(demo_cohort)
    labs = _labs("quota-c", "quota-d")
    c_lab, d_lab = labs["quota-c"], labs["quota-d"]
    with httpx.Client(base_url=deployment.url, timeout=120) as c:
        dataset = _upload(c, c_lab, archive, wait=60)
        assert dataset.status_code == 201, dataset.text
        held = _held(c, c_lab)
    train = {"dataset": dataset.json()["id"], "preprocess": TINY_AUGMENT["preprocess"],
             "model": TINY_AUGMENT["model"], "train": {"epochs": 1, "batch_size": 2}}
    with serving(_app(lab_storage_quota=held + 100)) as url, httpx.Client(base_url=url, timeout=120) as c:
        # the model's weights alone (its estimate) do not fit in 100 bytes of room
        refused = c.post("/v1/models", headers=c_lab, json=train)
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert "MCVAE_LAB_STORAGE_QUOTA" in detail and "train job" in detail and f"holds {held} bytes" in detail
        augment = c.post("/v1/augmentations", headers=c_lab,
                         json={"dataset": dataset.json()["id"], "target": "balance", "config": TINY_AUGMENT})
        assert augment.status_code == 422, augment.text
        assert "MCVAE_LAB_STORAGE_QUOTA" in augment.json()["detail"]
        # no job was recorded for the refusals
        jobs = c.get("/v1/jobs", headers=c_lab).json()["items"]
        assert [j["kind"] for j in jobs] == ["ingest"]
        # another lab's request is judged on its own holdings: d holds nothing, so its only
        # refusal is that it has no such dataset (404), not the quota
        other = c.post("/v1/models", headers=d_lab, json=train)
        assert other.status_code == 404, other.text


def test_a_lab_past_its_active_jobs_gets_429_and_another_lab_does_not(deployment, demo_cohort):
    from workers import db
    from workers.records import JobRecord, utcnow

    archive = zip_folder(demo_cohort)
    tag = uuid.uuid4().hex[:6]
    labs = _labs("busy", "idle", tag=tag)
    owner = f"busy-{tag}"
    # A queued job no worker will take (it is never published): the lab's one active job.
    job_id, now = str(uuid.uuid4()), utcnow()
    with db.session(os.environ["MCVAE_DATABASE_URL"]) as s:
        s.add(JobRecord(id=job_id, owner=owner, kind="sample", state="queued", stage="queued",
                        progress=0.0, params={"model": "model-x", "n": 1}, metrics={}, artifacts=[],
                        queue="none", attempts=0, cancel_requested=False, created_at=now, updated_at=now))
    staging_before = _staging(deployment)
    try:
        with serving(_app(lab_max_active_jobs=1, quota_retry_seconds=7)) as url, \
                httpx.Client(base_url=url, timeout=120) as c:
            refused = _upload(c, labs["busy"], archive)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "7"
            detail = refused.json()["detail"]
            assert "MCVAE_LAB_MAX_ACTIVE_JOBS=1" in detail and "1 jobs queued or running" in detail
            assert c.get("/v1/datasets", headers=labs["busy"]).json()["total"] == 0
            assert _staging(deployment) <= staging_before
            # the other lab has no active job: its upload is taken
            idle = _upload(c, labs["idle"], archive, wait=60)
            assert idle.status_code == 201, idle.text
            # once the busy lab's job ends, it may start another
            assert c.post(f"/v1/jobs/{job_id}/cancel", headers=labs["busy"]).json()["state"] == "cancelled"
            again = _upload(c, labs["busy"], archive, wait=60)
            assert again.status_code == 201, again.text
    finally:
        with db.session(os.environ["MCVAE_DATABASE_URL"]) as s:
            s.query(JobRecord).filter(JobRecord.id == job_id).update({"state": "cancelled"})
