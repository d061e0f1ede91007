"""Profiles in the API (POST /v1/augmentations 'profile') and a shared (class-conditional)
model over HTTP: sampled by class, a missing or unknown class refused with a 422."""

from __future__ import annotations

import tempfile

import nibabel as nib
import numpy as np
import pytest

from tests.sse import read_sse

from .conftest import TINY_AUGMENT

pytestmark = pytest.mark.slow

# The standard profile (64^3 at 3 mm) under a request that shrinks the grid only: its 3 mm
# spacing is what the profile adds. No model_scope: one shared model is the default.
SHARED_CONFIG = {**TINY_AUGMENT, "preprocess": {"target_shape": [16, 16, 16]}}


@pytest.fixture(scope="module")
def shared_augmentation(deployment, dataset) -> dict:
    with deployment.client() as c:
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": "AD=2",
                                              "profile": "standard", "config": SHARED_CONFIG})
        assert r.status_code == 202, r.text
        started = r.json()
        with c.stream("GET", started["events_url"], timeout=300) as stream:
            read_sse(stream)
        final = c.get(f"/v1/augmentations/{started['id']}").json()
        job = c.get(f"/v1/jobs/{started['id']}").json()
    return {"started": started, "final": final, "job": job}


def test_an_unknown_profile_is_422_naming_the_profiles(deployment, dataset):
    with deployment.client() as c:
        before = len(c.get("/v1/jobs", params={"kind": "augment", "limit": 500}).json()["items"])
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "profile": "huge"})
        assert r.status_code == 422, r.text
        assert "profile" in r.json()["detail"] and "'huge'" in r.json()["detail"]
        assert "demo, standard, research" in r.json()["detail"]
        # the request's config is checked merged with the profile, naming the field
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "profile": "demo",
                                              "config": {"model": {"channels": "wide"}}})
        assert r.status_code == 422 and "config: model.channels" in r.json()["detail"], r.text
        assert len(c.get("/v1/jobs", params={"kind": "augment", "limit": 500}).json()["items"]) == before


def test_the_profile_is_recorded_and_its_settings_lie_under_the_request_config(deployment, shared_augmentation):
    started, final, job = shared_augmentation["started"], shared_augmentation["final"], shared_augmentation["job"]
    assert started["profile"] == final["profile"] == "standard"
    assert final["state"] == "succeeded", final["error"]
    assert job["params"]["profile"] == "standard" and job["params"]["config"] == SHARED_CONFIG
    assert set(final["models"]) == {"shared"} and final["synthetic_counts"]["AD"] == 2
    with deployment.client() as c:
        model = c.get(f"/v1/models/{final['models']['shared']}").json()
    pre = model["config"]["preprocess"]
    assert pre["target_shape"] == [16, 16, 16]  # the request's own
    assert pre["target_spacing"] == [3.0, 3.0, 3.0]  # the standard profile's, under it
    assert model["config"]["model"]["channels"] == [4, 8] and model["config"]["model"]["n_classes"] == 2


def test_a_shared_model_reports_the_metrics_of_each_class_it_drew(deployment, shared_augmentation):
    final = shared_augmentation["final"]
    drawn = final["metrics"]["classes"]
    assert set(drawn) == {"AD"}  # target AD=2: the shared model drew AD only
    with deployment.client() as c:
        model = c.get(f"/v1/models/{final['models']['shared']}").json()
    assert model["label"] == "shared" and model["state"] == "ready"
    # keyed by class, each entry shaped like a per-class model's metrics
    assert model["metrics"] == {"AD": drawn["AD"]}
    ad = model["metrics"]["AD"]
    assert ad["model_scope"] == "shared" and ad["n_synthetic"] == 2 and ad["n_train"] >= 1
    assert {"final_elbo", "near_copies", "memorisation"} <= set(ad)


def _nifti(raw: bytes) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as fh:
        fh.write(raw)
        fh.flush()
        return np.asarray(nib.load(fh.name).dataobj)


def test_a_shared_model_is_sampled_by_class_and_a_bad_class_is_422(deployment, shared_augmentation):
    model_id = shared_augmentation["final"]["models"]["shared"]
    with deployment.client() as c:
        before = len(c.get("/v1/jobs", params={"kind": "sample", "limit": 500}).json()["items"])
        missing = c.post(f"/v1/models/{model_id}/samples", json={"n": 1})
        assert missing.status_code == 422, missing.text
        assert "label" in missing.json()["detail"] and "classes: AD, CN" in missing.json()["detail"]
        unknown = c.post(f"/v1/models/{model_id}/samples", json={"n": 1, "label": "MCI"})
        assert unknown.status_code == 422 and "no class 'MCI'" in unknown.json()["detail"]
        assert len(c.get("/v1/jobs", params={"kind": "sample", "limit": 500}).json()["items"]) == before

        ad = c.post(f"/v1/models/{model_id}/samples", json={"n": 1, "label": "AD", "seed": 3})
        assert ad.status_code == 200, ad.text
        assert "syn_AD_" in ad.headers["content-disposition"]
        cn = c.post(f"/v1/models/{model_id}/samples", json={"n": 1, "label": "CN", "seed": 3})
        assert cn.status_code == 200, cn.text
        a, b = _nifti(ad.content), _nifti(cn.content)
        assert a.shape == b.shape == (16, 16, 16) and not np.allclose(a, b)
        job = c.get(f"/v1/jobs/{ad.headers['x-job-id']}").json()
        assert job["params"]["label"] == "AD" and job["metrics"]["label"] == "AD"
