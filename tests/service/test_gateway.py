"""The gateway over real HTTP (uvicorn on loopback) with a real Celery worker behind it:
upload, augmentation followed over SSE, download, synchronous sampling, labs kept apart."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.sse import read_sse

from .conftest import TINY_AUGMENT

pytestmark = pytest.mark.slow


def read_nifti(raw: bytes) -> nib.Nifti1Image:
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as fh:
        fh.write(raw)
        fh.flush()
        image = nib.load(fh.name)
        return nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header)


@pytest.fixture(scope="module")
def augmentation(deployment, dataset) -> dict:
    """An augmentation of the demo dataset, followed over SSE to its end."""
    with deployment.client() as c:
        # The CLI's target syntax: AD=3 adds 3 AD scans (what 'balance' would give here).
        # A per-class model (the default, one shared model, is tested in test_profiles_and_shared).
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "AD=3",
                                              "config": {**TINY_AUGMENT, "model_scope": "per_class"},
                                              "name": "demo balance"})
        assert r.status_code == 202, r.text
        started = r.json()
        with c.stream("GET", started["events_url"], timeout=300) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = read_sse(stream)
        final = c.get(f"/v1/augmentations/{started['id']}").json()
    return {"started": started, "events": events, "final": final}


def test_health_and_readiness_need_no_key(deployment):
    with deployment.client(lab=None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ready"
        assert set(r.json()["checks"]) == {"database", "broker", "workers"}


def test_upload_is_ingested_with_class_counts(dataset):
    assert dataset["state"] == "ready"
    assert dataset["classes"] == {"AD": 3, "CN": 6}
    assert dataset["n_scans"] == 9 and dataset["spatial_dims"] == 3
    assert dataset["name"] == "demo"


def test_augmentation_streams_progress_and_its_result_holds_readable_scans(deployment, augmentation):
    events, final = augmentation["events"], augmentation["final"]
    names = [name for name, _ in events]
    assert names[-1] == "end" and names.count("end") == 1
    assert events[-1][1]["state"] == "succeeded", events[-1]
    progress = [d["progress"] for n, d in events if n == "progress" and d["progress"] is not None]
    assert progress == sorted(progress) and len(set(progress)) >= 3, progress
    assert any(d["stage"].startswith("training") for _, d in events)

    assert final["state"] == "succeeded"
    assert final["target"] == {"AD": 3}
    assert final["synthetic_counts"] == {"AD": 3, "CN": 0}
    assert final["train_counts"] == {"AD": 3, "CN": 6} and final["real_counts"] == {"AD": 3, "CN": 6}
    assert isinstance(final["near_copies_replaced"], int)
    assert set(final["models"]) == {"AD"}

    with deployment.client() as c:
        r = c.get(final["result_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    scans = [n for n in names if n.endswith(".nii.gz")]
    synthetic = [n for n in scans if n.startswith("synthetic/AD/")]
    assert len(synthetic) == 3 and len(scans) == 12  # and the 9 real scans, preprocessed
    for name in synthetic:
        sidecar = json.loads(zf.read(name.replace(".nii.gz", ".json")))
        assert sidecar["synthetic"] is True and sidecar["class"] == "AD"
    manifest = zf.read("manifest.csv").decode()
    rows = list(csv.DictReader(io.StringIO(manifest)))
    assert [r["synthetic"] for r in rows].count("true") == 3 and len(rows) == 12
    assert str(deployment.data_dir) not in manifest  # no server paths
    affines = set()
    for row in rows:  # every row resolves inside the zip, on one grid and one intensity scale
        assert row["path"] in names, row
        image = read_nifti(zf.read(row["path"]))
        data = image.get_fdata()
        assert image.shape == (16, 16, 16) and data.min() >= 0 and data.max() <= 1
        affines.add(tuple(np.round(image.affine, 4).ravel()))
        if row["synthetic"] == "false":
            assert row["path"].startswith(f"real/{row['label']}/") and row["source_path"].startswith(row["label"] + "/")
    assert len(affines) == 1
    assert any(n.startswith("report/") and n.endswith(".png") for n in names)
    assert "report/metrics.json" in names
    assert not any(n.startswith("models/") for n in names)


def test_events_name_no_worker_and_a_cancel_after_the_end_changes_nothing(deployment, augmentation):
    """Issue 23, items 4 and 8: the stream says "started (attempt 1)", not the worker's node
    name and pid; cancelling the ended job answers it as it is and adds no event."""
    import socket

    messages = [d["message"] for _, d in augmentation["events"]]
    assert "started (attempt 1)" in messages, messages
    hostname = socket.gethostname()
    assert not [m for m in messages if "gw-test-" in m or "@test" in m or hostname in m], messages
    job_id = augmentation["started"]["id"]
    with deployment.client() as c:
        before = c.get(f"/v1/jobs/{job_id}").json()
        for _ in range(2):
            again = c.post(f"/v1/jobs/{job_id}/cancel")
            assert again.status_code == 200 and again.json() == before
        with c.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            replay = [d["message"] for n, d in read_sse(stream) if n == "progress"]
    assert replay == [d["message"] for n, d in augmentation["events"] if n == "progress"]
    assert not any(m.startswith("cancellation requested") for m in replay)


def test_augmentation_models_are_listed_with_config_and_curves(deployment, augmentation):
    model_id = augmentation["final"]["models"]["AD"]
    with deployment.client() as c:
        listed = c.get("/v1/models").json()
        model = c.get(f"/v1/models/{model_id}").json()
    assert model_id in [m["id"] for m in listed["items"]]
    assert model["state"] == "ready" and model["label"] == "AD"
    assert model["config"]["preprocess"]["target_shape"] == [16, 16, 16]
    assert model["config"]["model"]["latent_dims"] == [4]
    assert len(model["curves"]) >= 1 and "loss" in model["curves"][-1]


def test_synchronous_sampling_returns_nifti_and_zip(deployment, augmentation):
    model_id = augmentation["final"]["models"]["AD"]
    with deployment.client() as c:
        one = c.post(f"/v1/models/{model_id}/samples", json={"n": 1, "seed": 7})
        assert one.status_code == 200, one.text
        assert one.headers["content-type"] == "application/gzip"
        assert gzip.decompress(one.content)[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")
        image = read_nifti(one.content)
        assert image.shape == (16, 16, 16) and np.isfinite(image.get_fdata()).all()
        again = c.post(f"/v1/models/{model_id}/samples", json={"n": 1, "seed": 7})
        assert np.array_equal(read_nifti(again.content).get_fdata(), image.get_fdata())  # seeded

        three = c.post(f"/v1/models/{model_id}/samples", json={"n": 3})
        assert three.status_code == 200 and three.headers["content-type"] == "application/zip"
        zf = zipfile.ZipFile(io.BytesIO(three.content))
        assert len([n for n in zf.namelist() if n.endswith(".nii.gz")]) == 3
        assert "manifest.csv" in zf.namelist()

        # each sample job measures its scans' sharpness against the energy the model kept of its
        # training scans: the two jobs' ratios stand as the gradient energies of the scans delivered
        from models.report import gradient_energy
        jobs = [c.get(f"/v1/jobs/{r.headers['x-job-id']}").json() for r in (one, three)]
        sharp = [j["metrics"]["sharpness"] for j in jobs]
        delivered = [np.stack([image.get_fdata(dtype=np.float32)]),
                     np.stack([read_nifti(zf.read(n)).get_fdata(dtype=np.float32)
                               for n in sorted(zf.namelist()) if n.endswith(".nii.gz")])]
        energy = [gradient_energy(torch.from_numpy(x)[:, None]) for x in delivered]
        assert sharp[0]["gradient_energy_ratio"] / sharp[1]["gradient_energy_ratio"] == pytest.approx(
            energy[0] / energy[1], rel=1e-3)
        for record, job in zip(sharp, jobs):
            low, high = record["band"]
            assert record["warning"] == (not low <= record["gradient_energy_ratio"] <= high)
            with c.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
                said = [d["message"] for _, d in read_sse(stream)]
            assert any("the sampled scans' gradient energy" in m for m in said) == record["warning"], said

        queued = c.post(f"/v1/models/{model_id}/samples", json={"n": 50, "wait": True})
        assert queued.status_code == 202 and queued.json()["kind"] == "sample"
        c.post(f"/v1/jobs/{queued.json()['id']}/cancel")

        huge = c.post(f"/v1/models/{model_id}/samples", json={"n": 10**9})
        assert huge.status_code == 422 and "at most" in huge.json()["detail"]

        # a per-class model: its own class may be named, another is a 422 (no job queued)
        own = c.post(f"/v1/models/{model_id}/samples", json={"n": 1, "seed": 7, "label": "AD"})
        assert own.status_code == 200 and np.array_equal(read_nifti(own.content).get_fdata(), image.get_fdata())
        other = c.post(f"/v1/models/{model_id}/samples", json={"n": 1, "label": "CN"})
        assert other.status_code == 422 and "trained on class 'AD' only" in other.json()["detail"]


def test_another_labs_key_finds_nothing(deployment, dataset, augmentation):
    job_id = augmentation["started"]["id"]
    model_id = augmentation["final"]["models"]["AD"]
    with deployment.client("lab-b") as c:
        paths = (f"/v1/datasets/{dataset['id']}", f"/v1/models/{model_id}", f"/v1/jobs/{job_id}",
                 f"/v1/augmentations/{job_id}", f"/v1/jobs/{job_id}/result",
                 f"/v1/jobs/{job_id}/events")
        for path in paths:
            r = c.get(path)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["code"] == "not_found"
        assert c.post(f"/v1/models/{model_id}/samples", json={"n": 1}).status_code == 404
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert c.delete(f"/v1/datasets/{dataset['id']}").status_code == 404
        assert c.post("/v1/augmentations", json={"dataset": dataset["id"]}).status_code == 404
        assert c.get("/v1/datasets").json()["items"] == []
        assert c.get("/v1/models").json()["items"] == []
        assert c.get("/v1/jobs").json()["items"] == []
    with deployment.client() as c:  # and lab-a still sees all of it
        assert c.get(f"/v1/datasets/{dataset['id']}").status_code == 200
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"


def test_jobs_are_listed_with_filters_and_pages(deployment, augmentation):
    # Other modules share the deployment and may have run augmentations of their own: the
    # filter must give exactly the lab's augment jobs, whatever they are, ours among them.
    with deployment.client() as c:
        everything = c.get("/v1/jobs", params={"limit": 500}).json()
        augments = c.get("/v1/jobs", params={"kind": "augment", "limit": 500}).json()
        assert everything["next_offset"] is None  # all of them on one page
        ids = [j["id"] for j in augments["items"]]
        assert augmentation["started"]["id"] in ids
        assert ids == [j["id"] for j in everything["items"] if j["kind"] == "augment"]  # newest first
        assert len(ids) < len(everything["items"])  # other kinds (the dataset's ingest) left out
        first = c.get("/v1/jobs", params={"limit": 1}).json()
        second = c.get("/v1/jobs", params={"limit": 1, "offset": first["next_offset"]}).json()
        assert first["items"][0]["id"] != second["items"][0]["id"]
        assert [first["items"][0]["id"], second["items"][0]["id"]] == [j["id"] for j in everything["items"][:2]]
        assert c.get("/v1/jobs", params={"state": "bogus"}).status_code == 422


def _succeeded_augments() -> int:
    """Succeeded augment jobs of every lab, read from the job records (not via /metrics)."""
    from workers import list_jobs

    return len(list_jobs(state="succeeded", kind="augment", limit=1000))


def test_metrics_count_requests_jobs_and_queues(deployment, augmentation):
    # Other modules share the deployment: the gauge must equal however many augmentations have
    # succeeded (ours among them), read while no other one finished.
    assert augmentation["final"]["state"] == "succeeded", augmentation["final"]["error"]
    with deployment.client() as c:
        assert c.get("/metrics").status_code == 200
        for _ in range(20):
            succeeded = _succeeded_augments()
            text = c.get("/metrics").text
            if _succeeded_augments() == succeeded:
                break
            time.sleep(0.5)
    assert succeeded >= 1
    assert 'mcvae_http_requests_total{method="GET",route="/metrics",status="200"}' in text
    assert 'mcvae_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/metrics"}' in text
    assert f'mcvae_jobs{{kind="augment",state="succeeded"}} {float(succeeded)}' in text
    assert 'mcvae_queue_depth{queue="gpu"}' in text
    with deployment.client(lab=None) as c:
        assert c.get("/metrics").status_code == 401


def test_deleting_a_dataset_removes_it(deployment, demo_cohort):
    from .conftest import zip_folder

    with deployment.client() as c:
        r = c.post("/v1/datasets", params={"wait": 60}, content=zip_folder(demo_cohort, wrap=None),
                   headers={"Content-Type": "application/zip"})
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        assert c.delete(f"/v1/datasets/{dataset_id}").status_code == 204
        assert c.get(f"/v1/datasets/{dataset_id}").status_code == 404
        assert dataset_id not in [d["id"] for d in c.get("/v1/datasets").json()["items"]]
    assert not (deployment.data_dir / "artifacts" / "datasets" / dataset_id).exists()
    uploads = list((deployment.data_dir / "artifacts" / "datasets").glob("dataset-upload-*"))
    assert uploads == [], "uploads are removed once ingested"


TINY_TRAIN = {"label": "AD", "preprocess": TINY_AUGMENT["preprocess"], "model": TINY_AUGMENT["model"],
              "sampler": {"kind": "mala", "n_steps": 2},
              "train": {"pretrain_epochs": 3, "epochs": 2, "batch_size": 4}}


def test_training_a_model_then_deleting_it(deployment, dataset):
    with deployment.client() as c:
        r = c.post("/v1/models", json={"dataset": dataset["id"], "name": "tiny AD", **TINY_TRAIN})
        assert r.status_code == 202, r.text
        model = r.json()
        assert model["state"] == "training" and model["label"] == "AD"
        deadline = time.monotonic() + 120
        while model["state"] == "training" and time.monotonic() < deadline:
            time.sleep(0.3)
            model = c.get(f"/v1/models/{model['id']}").json()
        assert model["state"] == "ready", model
        assert model["metrics"]["steps"] == 5 and len(model["curves"]) == 5
        assert model["config"]["model"]["latent_dims"] == [4] and model["name"] == "tiny AD"
        assert c.get("/v1/models", params={"dataset": dataset["id"]}).json()["total"] >= 1

        long = c.post("/v1/models", json={"dataset": dataset["id"], **TINY_TRAIN,
                                          "train": {**TINY_TRAIN["train"], "epochs": 100_000}}).json()
        for doomed in (model, long):  # a trained model, and one still training (cancelled)
            assert c.delete(f"/v1/models/{doomed['id']}").status_code == 204
            assert c.get(f"/v1/models/{doomed['id']}").status_code == 404
        deadline = time.monotonic() + 60
        while (job := c.get(f"/v1/jobs/{long['job_id']}").json())["state"] not in ("cancelled", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job["state"] == "cancelled"
    assert not (deployment.data_dir / "artifacts" / "models" / model["id"]).exists()
