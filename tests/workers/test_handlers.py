"""Job handlers run in-process (no queue): what each kind produces, and resuming training."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from workers import ArtifactStore, Settings
from workers.context import JobCancelled, JobContext
from workers.handlers import HANDLERS
from workers.params import SCHEMAS, InvalidParams

from .conftest import TINY_PREPROCESS, tiny_train_params


class StopAfter(JobContext):
    """Asks the job to stop after ``steps`` should_stop() calls (one per training step)."""

    def __init__(self, *args, steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.steps = 0, steps

    def should_stop(self) -> bool:
        self.calls += 1
        return self.calls > self.steps


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path, checkpoint_every=4)


@pytest.fixture
def dataset(store, demo_cohort):
    return store.put_dir("dataset", demo_cohort).id


def run(kind, params, ctx):
    return HANDLERS[kind](ctx, SCHEMAS[kind].model_validate(params))


def _grey(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image, dtype=float)


def test_training_resumed_from_a_checkpoint_ends_as_an_uninterrupted_run(store, settings, dataset):
    params = tiny_train_params(dataset, epochs=3, checkpoint_every=4)  # 9 scans, batch 4: 18 steps
    whole = run("train", params, JobContext("job-a", store, settings=settings))

    stopped = StopAfter("job-b", store, settings=settings, steps=10)
    with pytest.raises(JobCancelled, match="stopped at step 11; last checkpoint at step 8"):
        run("train", params, stopped)
    assert store.list("checkpoint", "checkpoint-job-b") == ["checkpoint-job-b-000000004", "checkpoint-job-b-000000008"]

    again = JobContext("job-b", store, settings=settings)
    resumed = run("train", params, again)
    assert "resumed from step 8 of 18" in [e["message"] for e in again.events]
    assert resumed.metrics["resumed_from"] == 8 and resumed.metrics["steps"] == 18
    assert [r["epoch"] for r in resumed.metrics["history"]] == [1, 2, 3, 4, 5, 6]
    # Every step after the checkpoint replays exactly: same later epochs, same final weights.
    # (Epoch 3, cut at step 8, averages only its batches after the resume.)
    for a, b in list(zip(whole.metrics["history"], resumed.metrics["history"]))[3:]:
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    from models import load

    (model_a, _, _), (model_b, _, _) = load(store.path("model-job-a")), load(store.path("model-job-b"))
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    assert resumed.obsolete == store.list("checkpoint", "checkpoint-job-b")  # dropped once recorded
    assert resumed.artifacts == ["model-job-b"] and store.verify("model-job-b")


def test_sample_and_evaluate_a_trained_model(store, settings, dataset):
    run("train", tiny_train_params(dataset, epochs=1, label="AD"), JobContext("t", store, settings=settings))

    sampled = run("sample", {"model": "model-t", "n": 5, "seed": 1, "batch_size": 2},
                  JobContext("s", store, settings=settings))
    out = store.path("output-s")
    assert np.load(out / "samples.npy").shape == (5, 1, 8, 8)
    sidecar = json.loads((out / "scans" / "syn_AD_00004.json").read_text())
    assert sidecar["synthetic"] is True and sidecar["class"] == "AD" and sidecar["model_id"] == "model-t"
    # a trained model samples from the aggregate posterior it fitted; the sidecar says so
    assert sidecar["latent_source"] == "aggregate" and sidecar["sampler"] == "mala-entropy-diag"
    # a model of a PNG cohort samples PNGs at its bit depth (issue 25)
    assert _grey(out / "scans" / "syn_AD_00000.png").shape == (8, 8)
    assert (out / "manifest.csv").read_text().count("true") == 5
    assert sampled.metrics["n"] == 5 and store.verify("output-s")
    # the train job kept its scans' gradient energy; the sample job measured its draws against it
    from models import load
    from models.checks import TRAIN_GRADIENT_ENERGY
    from models.report import gradient_energy
    kept = load(store.path("model-t"))[2][TRAIN_GRADIENT_ENERGY]
    sharp = sampled.metrics["sharpness"]
    assert set(kept) == {"AD"} and sharp["gradient_energy_ratio"] == pytest.approx(
        gradient_energy(torch.from_numpy(np.load(out / "samples.npy"))) / kept["AD"], rel=1e-6)
    assert ("warning: class 'AD'" in sampled.message) == sharp["warning"]

    evaluated = run("evaluate", {"model": "model-t", "dataset": dataset, "n_particles": 8},
                    JobContext("e", store, settings=settings))
    m = evaluated.metrics
    assert m["label"] == "AD" and m["n_items"] == 3 and np.isfinite(m["log_px"])
    assert m["bits_per_dim"] == pytest.approx(-m["log_px"] / (64 * np.log(2)))
    assert json.loads(store.path("report-e").read_text())["log_px"] == m["log_px"]


def test_ingest_copies_an_uploaded_archive_into_a_self_contained_dataset(store, settings, demo_cohort, tmp_path):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in demo_cohort.rglob("*.png"):
            zf.write(path, f"cohort/{path.relative_to(demo_cohort)}")
    upload = store.put_file("dataset", archive).id
    outcome = run("ingest", {"source": upload, "name": "demo"}, JobContext("i", store, settings=settings))
    summary = outcome.metrics["summary"]
    assert summary["classes"] == {"AD": 3, "CN": 6} and summary["spatial_dims"] == 2
    assert summary["source"] == "demo"
    lines = (store.path("dataset-i") / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,split" and "AD/AD_000.png,AD," in lines
    assert store.get("dataset-i").meta["summary"]["n_scans"] == 9


def test_bad_input_is_reported_with_the_field_named(store, settings, dataset, tmp_path):
    ctx = JobContext("x", store, settings=settings)
    with pytest.raises(InvalidParams, match=r"model.latent_dims: .*positive"):
        run("train", {**tiny_train_params(dataset), "model": {"arch": "mlp", "latent_dims": [0]}}, ctx)
    with pytest.raises(InvalidParams, match="preprocess.target_shape"):
        run("train", {**tiny_train_params(dataset), "preprocess": {**TINY_PREPROCESS, "target_shape": "big"}}, ctx)
    with pytest.raises(InvalidParams, match="dataset: no dataset 'dataset-missing'"):
        run("train", tiny_train_params("dataset-missing"), ctx)
    with pytest.raises(ValueError, match="no scans of class 'MCI'"):
        run("train", tiny_train_params(dataset, label="MCI"), ctx)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.png", b"x")
    with pytest.raises(InvalidParams, match="escapes the archive"):
        run("ingest", {"source": str(evil)}, ctx)
    with pytest.raises(InvalidParams, match="source: .*no such file"):
        run("ingest", {"source": str(tmp_path / "nowhere")}, ctx)


def test_a_stopped_augmentation_resumes_its_class_model_from_the_last_checkpoint(store, settings, dataset):
    # AD has 3 scans, batch 3: one step per epoch, 20 + 10 steps; checkpoints every 4 steps.
    # (The default scope, shared, has its own test below.)
    params = {"dataset": dataset, "target": "balance", "config": {
        "preprocess": TINY_PREPROCESS, "model": {"arch": "mlp", "latent_dims": [4], "hidden": [32]},
        "sampler": {"kind": "mala", "n_steps": 2}, "train": {"batch_size": 4},
        "pretrain_steps": 20, "mcmc_steps": 10, "model_scope": "per_class", "check_steps": 10}}
    whole = run("augment", params, JobContext("aug-a", store, settings=settings))

    # Stopped in phase 2 (after the sampler's warm start), resumed from step 24.
    stopped = StopAfter("aug-b", store, settings=settings, steps=25)
    with pytest.raises(JobCancelled, match="cancelled while training class 'AD'"):
        run("augment", params, stopped)
    kept = store.list("checkpoint", "checkpoint-aug-b-")
    assert [c.rsplit("-", 1)[1] for c in kept] == ["000000020", "000000024"]
    assert not store.exists("output-aug-b")  # nothing half-written

    again = JobContext("aug-b", store, settings=settings)
    resumed = run("augment", params, again)
    assert "class AD: resumed from step 24" in [e["message"] for e in again.events]
    assert resumed.metrics["resumed_from"] == {"AD": 24}
    assert sorted(resumed.obsolete) == sorted(store.list("checkpoint", "checkpoint-aug-b-"))
    assert store.list("checkpoint", "checkpoint-aug-b-")[-1].endswith("000000030")  # the final state
    from models import load

    (model_a, _, _), (model_b, _, _) = load(store.path(whole.artifacts[1])), load(store.path(resumed.artifacts[1]))
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    scans_a = sorted((store.path(whole.artifacts[0]) / "synthetic" / "AD").glob("*.png"))
    scans_b = sorted((store.path(resumed.artifacts[0]) / "synthetic" / "AD").glob("*.png"))
    assert len(scans_a) == len(scans_b) == 3
    for a, b in zip(scans_a, scans_b):
        # PNG slices in, 8-bit PNGs out: equal up to one grey level of rounding
        np.testing.assert_allclose(_grey(a), _grey(b), atol=1)


SHARED_AUGMENT = {"preprocess": TINY_PREPROCESS, "model": {"arch": "mlp", "latent_dims": [4], "hidden": [32]},
                  "sampler": {"kind": "mala", "n_steps": 2}, "train": {"batch_size": 4},
                  "pretrain_steps": 20, "mcmc_steps": 10, "model_scope": "shared", "check_steps": 10,
                  # every draw delivered: whether a draw of this 33-step model lands just inside the
                  # near-copy threshold differs between the whole and the resumed run (weights equal
                  # to 1e-4), and the resumed run's count is not what this file tests
                  "near_copies": "keep"}


def test_a_stopped_shared_augmentation_resumes_its_model_from_the_last_checkpoint(store, settings, dataset):
    # 9 scans of both classes, batch 4: 3 steps per epoch, 7 + 4 epochs = 33 steps; checkpoints every 4.
    params = {"dataset": dataset, "target": {"AD": 3}, "config": SHARED_AUGMENT}
    whole = run("augment", params, JobContext("sh-a", store, settings=settings))
    assert whole.metrics["models"] == {"shared": "model-sh-a-0"}

    stopped = StopAfter("sh-b", store, settings=settings, steps=25)
    with pytest.raises(JobCancelled, match="cancelled while training the shared model"):
        run("augment", params, stopped)
    kept = store.list("checkpoint", "checkpoint-sh-b-")
    assert [c.rsplit("-", 1)[1] for c in kept] == ["000000020", "000000024"]
    assert not store.exists("output-sh-b")

    again = JobContext("sh-b", store, settings=settings)
    resumed = run("augment", params, again)
    assert "shared model: resumed from step 24" in [e["message"] for e in again.events]
    # The job's event feed carries the CLI's warning when the model learned the class mean only.
    spread = resumed.metrics["classes"]["AD"]["subject_spread"]
    warned = [e for e in again.events
              if e.get("level") == "warning" and "reconstructs its training scans nearly alike" in e["message"]]
    assert spread["warning"] and len(warned) == 1  # 33 steps of a tiny MLP: the class mean only
    assert resumed.metrics["resumed_from"] == {"shared": 24}
    assert store.list("checkpoint", "checkpoint-sh-b-")[-1].endswith("000000033")  # the final state
    assert sorted(resumed.obsolete) == sorted(store.list("checkpoint", "checkpoint-sh-b-"))
    from models import load

    (model_a, _, meta_a), (model_b, _, meta_b) = (load(store.path("model-sh-a-0")), load(store.path("model-sh-b-0")))
    assert meta_a["classes"] == meta_b["classes"] == ["AD", "CN"]
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    scans_a = sorted((store.path("output-sh-a") / "synthetic" / "AD").glob("*.png"))
    scans_b = sorted((store.path("output-sh-b") / "synthetic" / "AD").glob("*.png"))
    assert len(scans_a) == len(scans_b) == 3
    for a, b in zip(scans_a, scans_b):
        # PNG slices in, 8-bit PNGs out: equal up to one grey level of rounding
        np.testing.assert_allclose(_grey(a), _grey(b), atol=1)

    # The tiny model learned the class mean only, so it was trained again from a fresh seed
    # (retrains: 1, the default), in a checkpoint series of its own.
    assert resumed.metrics["classes"]["AD"]["retrains"] == 1
    # A rerun after the final checkpoints trains nothing more: it resumes both at their ends.
    third = JobContext("sh-b", store, settings=settings)
    assert run("augment", params, third).metrics["resumed_from"] == {"shared": 33, "shared~retrain1": 33}

    # Stopped during the retrain (33 steps of the first model, then 5 of the second): the rerun
    # finds the first model complete and resumes the retrain from its checkpoint at step 4.
    with pytest.raises(JobCancelled, match="cancelled while training the shared model"):
        run("augment", params, StopAfter("sh-c", store, settings=settings, steps=38))
    again = JobContext("sh-c", store, settings=settings)
    resumed_retrain = run("augment", params, again)
    assert resumed_retrain.metrics["resumed_from"] == {"shared": 33, "shared~retrain1": 4}
    assert "shared model (retrain 1): resumed from step 4" in [e["message"] for e in again.events]
    model_c, _, _ = load(store.path("model-sh-c-0"))
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.allclose(a, c, rtol=1e-4, atol=1e-6), name


def test_a_sample_job_draws_the_named_class_of_a_shared_model(store, settings, dataset):
    run("augment", {"dataset": dataset, "target": {"AD": 2}, "config": {**SHARED_AUGMENT, "mcmc_steps": 3}},
        JobContext("sh", store, settings=settings))
    out = run("sample", {"model": "model-sh-0", "n": 3, "label": "AD"}, JobContext("s1", store, settings=settings))
    assert out.metrics["label"] == "AD" and out.message.startswith("sampled 3 scans of class 'AD'")
    assert out.metrics["sharpness"]["gradient_energy_ratio"] > 0  # against the shared model's AD scans
    scans = store.path("output-s1") / "scans"
    assert sorted(p.name for p in scans.glob("*.png")) == [f"syn_AD_0000{i}.png" for i in range(3)]
    assert json.loads((scans / "syn_AD_00000.json").read_text())["class"] == "AD"
    assert (store.path("output-s1") / "manifest.csv").read_text().count(",AD,") == 3
    run("sample", {"model": "model-sh-0", "n": 3, "label": "CN"}, JobContext("s2", store, settings=settings))
    ad, cn = (np.load(store.path(f"output-{j}") / "samples.npy") for j in ("s1", "s2"))
    assert ad.shape == cn.shape == (3, 1, 8, 8) and not np.allclose(ad, cn)

    ctx = JobContext("s3", store, settings=settings)
    with pytest.raises(InvalidParams, match=r"^label: .*class-conditional.*\(classes: AD, CN\)$"):
        run("sample", {"model": "model-sh-0", "n": 1}, ctx)
    with pytest.raises(InvalidParams, match=r"^label: the model has no class 'MCI' \(classes: AD, CN\)$"):
        run("sample", {"model": "model-sh-0", "n": 1, "label": "MCI"}, ctx)
    assert not store.exists("output-s3")


def test_a_sample_job_on_a_per_class_model_checks_a_given_class(store, settings, dataset):
    run("train", tiny_train_params(dataset, epochs=1, label="AD"), JobContext("t", store, settings=settings))
    out = run("sample", {"model": "model-t", "n": 2, "label": "AD"}, JobContext("s", store, settings=settings))
    assert out.metrics["label"] == "AD"
    with pytest.raises(InvalidParams, match="label: the model was trained on class 'AD' only"):
        run("sample", {"model": "model-t", "n": 2, "label": "CN"}, JobContext("s4", store, settings=settings))


def test_ingest_removes_the_upload_copy_it_read_whether_it_succeeds_or_fails(store, settings, demo_cohort, tmp_path):
    good = store.put_dir("dataset", demo_cohort, artifact_id="dataset-upload-good").id
    out = run("ingest", {"source": good}, JobContext("job-ok", store, settings=settings))
    assert out.obsolete == [good]  # deleted by the runner once the success is recorded

    (tmp_path / "one-class" / "CN").mkdir(parents=True)
    (tmp_path / "one-class" / "CN" / "notes.txt").write_text("not a scan")
    bad = store.put_dir("dataset", tmp_path / "one-class", artifact_id="dataset-upload-bad").id
    with pytest.raises(ValueError):
        run("ingest", {"source": bad}, JobContext("job-bad", store, settings=settings))
    assert not store.exists(bad)


def test_a_transfer_augmentation_stopped_in_its_base_model_resumes_it(store, settings, dataset):
    """model_scope transfer: the base model (every class's 9 scans) has its own checkpoint series
    under "(base)"; a job stopped while training it resumes it, then trains the AD model from it,
    and delivers what an uninterrupted run delivers. Only the AD model is a deliverable."""
    config = {**SHARED_AUGMENT, "model_scope": "transfer"}
    params = {"dataset": dataset, "target": {"AD": 3}, "config": config}
    whole = run("augment", params, JobContext("tr-a", store, settings=settings))
    assert list(whole.metrics["models"]) == ["AD"]

    # 9 scans, batch 4: 3 steps per epoch, 7 plain epochs = 21 base steps; checkpoints every 4
    stopped = StopAfter("tr-b", store, settings=settings, steps=10)
    with pytest.raises(JobCancelled, match="cancelled while training the base model"):
        run("augment", params, stopped)
    assert not store.exists("output-tr-b")

    again = JobContext("tr-b", store, settings=settings)
    resumed = run("augment", params, again)
    assert "base model: resumed from step 8" in [e["message"] for e in again.events]
    assert resumed.metrics["resumed_from"] == {"(base)": 8}
    scans_a = sorted((store.path("output-tr-a") / "synthetic" / "AD").glob("*.png"))
    scans_b = sorted((store.path("output-tr-b") / "synthetic" / "AD").glob("*.png"))
    assert len(scans_a) == len(scans_b) == 3
    for a, b in zip(scans_a, scans_b):
        # PNG slices in, 8-bit PNGs out: equal up to one grey level of rounding
        np.testing.assert_allclose(_grey(a), _grey(b), atol=1)


def test_an_augmentation_job_reports_its_utility_check_in_its_events(store, settings, dataset):
    # counterfactuals of the CN subjects, then the k-fold self-check: its verdict reaches the job's events
    config = {**SHARED_AUGMENT, "generator": "counterfactual", "abduction": "mean", "check_utility": True,
              "utility_folds": 2}
    ctx = JobContext("util-a", store, settings=settings)
    out = run("augment", {"dataset": dataset, "target": {"AD": 3}, "config": config}, ctx)
    info = out.metrics["classes"]["AD"]
    assert info["generator"]["kind"] == "counterfactual" and info["utility"]["folds"] == 2
    assert 0 <= info["fidelity"]["two_sample_auroc"] <= 1 and info["sharpness"]["gradient_energy_ratio"] > 0
    said = [e["message"] for e in ctx.events]
    verdict = [m for m in said if "the synthetic scans helped" in m or ("did not" in m and "help a classifier" in m)]
    assert len(verdict) == 1 and "over 2 folds of the train split" in verdict[0]
    sidecar = json.loads(next((store.path(out.artifacts[0]) / "synthetic" / "AD").glob("*.json")).read_text())
    assert sidecar["source"].startswith("real/CN/") and sidecar["derived_from_real_subject"] is True


def test_a_model_of_every_class_keeps_one_energy_and_its_samples_are_measured_against_it(store, settings, dataset):
    from models import load
    from models.checks import ALL_CLASSES, TRAIN_GRADIENT_ENERGY
    from models.report import gradient_energy

    run("train", tiny_train_params(dataset, epochs=1), JobContext("t", store, settings=settings))  # no label
    kept = load(store.path("model-t"))[2][TRAIN_GRADIENT_ENERGY]
    assert set(kept) == {ALL_CLASSES}
    sampled = run("sample", {"model": "model-t", "n": 3}, JobContext("s", store, settings=settings))
    drawn = torch.from_numpy(np.load(store.path("output-s") / "samples.npy"))
    assert sampled.metrics["label"] == ALL_CLASSES
    assert sampled.metrics["sharpness"]["gradient_energy_ratio"] == pytest.approx(
        gradient_energy(drawn) / kept[ALL_CLASSES], rel=1e-6)
