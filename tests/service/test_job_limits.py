"""Bounded jobs over HTTP (issue 23, item 1): a train or augment job past the deployment's limits
(models/budget.py, MCVAE_MAX_*) is refused at submit with a 422 that names the field, the setting
and the limit, and queues nothing; a job that got past a laxer gateway fails on the worker with
the same message, without running."""

from __future__ import annotations

import time

import pytest

from .conftest import TINY_AUGMENT

pytestmark = pytest.mark.slow

TINY_TRAIN = {"label": "AD", "preprocess": TINY_AUGMENT["preprocess"], "model": TINY_AUGMENT["model"],
              "sampler": {"kind": "mala", "n_steps": 2},
              "train": {"pretrain_epochs": 3, "epochs": 2, "batch_size": 4}}

# The measured cases, each with the message it must now get.
OVERSIZED_TRAIN = [
    ({"train": {"batch_size": 10_000_000}},
     "train.batch_size: 10000000 is above this deployment's limit 512 (MCVAE_MAX_BATCH_SIZE)"),
    ({"train": {"epochs": 1_000_000_000}},
     ("train.pretrain_epochs + train.epochs: 1000000003 optimiser steps is above this deployment's "
     "limit 200000 (MCVAE_MAX_STEPS)")),
    ({"model": {"arch": "mlp", "hidden": [100_000_000], "latent_dims": [4]}},
     "model: about 820400008192 parameters is above this deployment's limit 200000000 (MCVAE_MAX_PARAMETERS)"),
    ({"preprocess": {"spatial_dims": 3, "target_shape": [2048, 2048, 2048], "target_spacing": 0.1}},
     ("preprocess.target_shape: 2048 x 2048 x 2048 = 8589934592 voxels per scan is above this "
     "deployment's limit 16777216 (MCVAE_MAX_VOXELS)")),
]
OVERSIZED_AUGMENT = [
    ({"preprocess": {"spatial_dims": 3, "target_shape": [2048, 2048, 2048], "target_spacing": 0.1}},
     ("config.preprocess.target_shape: 2048 x 2048 x 2048 = 8589934592 voxels per scan is above this "
     "deployment's limit 16777216 (MCVAE_MAX_VOXELS)")),
    ({"pretrain_steps": 1_000_000_000},
     ("config.pretrain_steps + config.mcmc_steps: 1000000004 optimiser steps is above this deployment's "
     "limit 200000 (MCVAE_MAX_STEPS)")),
    ({"train": {"batch_size": 10_000_000}},
     "config.train.batch_size: 10000000 is above this deployment's limit 512 (MCVAE_MAX_BATCH_SIZE)"),
    ({"model": {"arch": "mlp", "hidden": [100_000_000], "latent_dims": [4]}},
     ("config.model: about 820400008192 parameters is above this deployment's limit 200000000 "
     "(MCVAE_MAX_PARAMETERS)")),
]


def _job_count(c) -> int:
    return len(c.get("/v1/jobs", params={"limit": 500}).json()["items"])


@pytest.mark.parametrize(("change", "message"), OVERSIZED_TRAIN)
def test_an_oversized_training_is_422_naming_setting_and_limit(deployment, dataset, change, message):
    with deployment.client() as c:
        before = _job_count(c)
        body = {"dataset": dataset["id"], **TINY_TRAIN}
        for key, value in change.items():
            body[key] = {**body.get(key, {}), **value}
        r = c.post("/v1/models", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == message
        assert _job_count(c) == before, "nothing is queued"


@pytest.mark.parametrize(("change", "message"), OVERSIZED_AUGMENT)
def test_an_oversized_augmentation_is_422_naming_setting_and_limit(deployment, dataset, change, message):
    with deployment.client() as c:
        before = _job_count(c)
        config = {**TINY_AUGMENT, **change}
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "target": {"AD": 2}, "config": config})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == message
        assert _job_count(c) == before, "nothing is queued"


def test_a_profile_plus_a_big_batch_is_refused_for_its_activation_memory(deployment, dataset):
    """The research profile (about 0.9 GiB at batch 8) at batch 500: about 57 GiB per batch."""
    with deployment.client() as c:
        r = c.post("/v1/augmentations", json={"dataset": dataset["id"], "profile": "research",
                                              "config": {"train": {"batch_size": 500}}})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail.startswith("config.train.batch_size: about 57.5 GiB of activations per batch")
        assert detail.endswith("limit 16 GiB (MCVAE_MAX_ACTIVATION_GIB)")


def test_training_steps_count_the_dataset_size(deployment, dataset):
    """9 scans at batch 1 are 9 steps per epoch: 30,010 epochs are 270,090 steps (the
    submit-time lower bound, one step per epoch, would have let them through)."""
    with deployment.client() as c:
        body = {"dataset": dataset["id"], **TINY_TRAIN, "label": None,
                "train": {"pretrain_epochs": 10, "epochs": 30_000, "batch_size": 1}}
        r = c.post("/v1/models", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == ("train.pretrain_epochs + train.epochs: 270090 optimiser steps is above "
                                      "this deployment's limit 200000 (MCVAE_MAX_STEPS)")


def test_a_job_past_a_laxer_gateway_fails_on_the_worker_unrun(deployment, dataset, monkeypatch):
    """The gateway (this process) allows batches of 100,000, the worker keeps the default 512:
    the job is accepted, then failed by the worker with the gateway's message, before training."""
    from workers import reset_settings

    monkeypatch.setenv("MCVAE_MAX_BATCH_SIZE", "100000")
    reset_settings()
    try:
        with deployment.client() as c:
            body = {"dataset": dataset["id"], **TINY_TRAIN, "train": {**TINY_TRAIN["train"], "batch_size": 1000}}
            r = c.post("/v1/models", json=body)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 60
            while (job := c.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
            assert job["state"] == "failed", job
            assert job["error"] == "train.batch_size: 1000 is above this deployment's limit 512 (MCVAE_MAX_BATCH_SIZE)"
            assert job["attempts"] == 1 and job["artifacts"] == []
            # refused before loading a scan: training would have moved progress past 0.02
            assert job["progress"] == 0.0 and "steps" not in job["metrics"], job
    finally:
        monkeypatch.delenv("MCVAE_MAX_BATCH_SIZE")
        reset_settings()
