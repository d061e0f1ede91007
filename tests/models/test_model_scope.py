"""augment(model_scope="shared"): one class-conditional model for the whole cohort, sampled per
class, written like per-class output (PNG slices in, PNGs out)."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image

from models.augment import augment
from models.options import AugmentConfig

TINY = {"preprocess": {"spatial_dims": 2, "target_shape": [16, 16], "target_spacing": None},
        "model": {"arch": "mlp", "latent_dims": [4], "hidden": [32]},
        "sampler": {"kind": "mala", "n_steps": 2},
        "train": {"batch_size": 4, "threads": 1},
        "pretrain_steps": 20, "mcmc_steps": 6, "near_copies": "keep", "check_steps": 10}


def test_a_shared_model_learns_every_class_and_draws_the_minority(slices_cohort, tmp_path):
    out = tmp_path / "out"
    result = augment(slices_cohort, out, target={"AD": 5}, config=AugmentConfig(**TINY, model_scope="shared"))

    assert set(result.models) == {"shared"}  # one model for the cohort, none per class
    meta = json.loads((out / "models" / "shared" / "config.json").read_text())
    assert meta["model"]["n_classes"] == 2
    assert meta["meta"]["classes"] == ["AD", "CN"]
    assert len(meta["meta"]["trained_on"]) == 9  # the majority's scans trained it too

    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    synthetic = [r for r in rows if r["synthetic"] == "true"]
    assert len(synthetic) == 5 and {r["label"] for r in synthetic} == {"AD"}
    # PNG slices in, PNGs out (issue 25): synthetic ones like the real ones, 8-bit 16 x 16
    real_img = Image.open(out / next(r["path"] for r in rows if r["synthetic"] == "false"))
    for row in synthetic:
        with Image.open(out / row["path"]) as img:
            assert img.format == "PNG" and (img.mode, img.size) == (real_img.mode, real_img.size) == ("L", (16, 16))
            assert np.asarray(img).std() > 0
    info = result.metrics["classes"]["AD"]
    assert info["model_scope"] == "shared"
    # The report says what the generator learned from: every class's train scans, not only AD's.
    assert info["n_train"] == 3 and info["n_trained_on"] == 9 and len(info["trained_on"]) == 9
    summary = (out / "report" / "summary.txt").read_text()
    assert "shared class-conditional generator trained on these 9 scans of every class (3 of this class)" in summary
    assert "generator trained on these 3 scans only" not in summary


def test_shared_is_the_default_and_per_class_stays_an_option(slices_cohort, tmp_path):
    result = augment(slices_cohort, tmp_path / "out", target={"AD": 2}, config=AugmentConfig(**TINY))
    assert set(result.models) == {"shared"}
    assert result.metrics["classes"]["AD"]["model_scope"] == "shared"
    per_class = augment(slices_cohort, tmp_path / "per_class", target={"AD": 2},
                        config=AugmentConfig(**TINY, model_scope="per_class"))
    assert set(per_class.models) == {"AD"}
    assert per_class.metrics["classes"]["AD"]["model_scope"] == "per_class"
    assert per_class.metrics["classes"]["AD"]["n_trained_on"] == 3  # the class's own scans only


def test_the_default_model_is_the_hierarchy_and_another_arch_gets_its_own_defaults():
    """The default generator is the hconv hierarchy (a vector over one latent map, centered);
    a user who names another arch gets no latent maps, so a valid config needs no extra keys."""
    default = AugmentConfig().model
    assert (default.arch, default.latent_channels, default.parameterization) == ("hconv", (4,), "centered")
    conv = AugmentConfig(model={"arch": "conv", "latent_dims": [8]}).model
    assert (conv.arch, conv.latent_channels, conv.parameterization) == ("conv", (), "noncentered")
    explicit = AugmentConfig(model={"arch": "hconv", "latent_channels": [2, 4], "parameterization": "noncentered"}).model
    assert (explicit.latent_channels, explicit.parameterization) == ((2, 4), "noncentered")


def test_transfer_starts_each_class_model_from_a_base_model_of_every_class(slices_cohort, tmp_path):
    """model_scope "transfer": a base model learns every class's train scans, each minority
    model starts from its weights; only class models are delivered, and the report says both."""
    import torch

    from models.augment import ClassCheckpoints
    from models.checkpoint import load
    from models.fitting import BASE_KEY

    saved: dict[str, dict] = {}
    checkpoints = ClassCheckpoints(every=1000, save=lambda key, state: saved.__setitem__(key, state),
                                   load=lambda key: None)
    out = tmp_path / "out"
    # retrains 0: this test counts checkpoint series (a retrain adds one, tests/models/test_subject_spread.py)
    config = AugmentConfig(**TINY, model_scope="transfer", retrains=0)
    result = augment(slices_cohort, out, target={"AD": 4}, config=config, checkpoints=checkpoints)

    assert set(result.models) == {"AD"}  # the base model learned both classes: not delivered
    assert set(saved) == {BASE_KEY, "AD"}
    plain = config.train_config(9, 0)  # the plain part of the budget in whole epochs, no chains
    assert saved[BASE_KEY]["global_step"] == plain.pretrain_epochs * 3  # 9 scans, batches of 4
    assert {r["phase"] for r in saved[BASE_KEY]["history"]} == {1}
    meta = json.loads((out / "models" / "AD" / "config.json").read_text())["meta"]
    assert len(meta["trained_on"]) == 3 and len(meta["base_trained_on"]) == 9
    info = result.metrics["classes"]["AD"]
    assert info["model_scope"] == "transfer" and info["n_train"] == 3 and info["n_base_trained_on"] == 9
    summary = (out / "report" / "summary.txt").read_text()
    assert "generator trained on these 3 scans, starting from a base model trained on the 9 scans of every class" \
        in summary

    # The class model is not the one per_class trains from scratch with the same seed.
    scratch = augment(slices_cohort, tmp_path / "scratch", target={"AD": 4},
                      config=AugmentConfig(**TINY, model_scope="per_class", retrains=0))
    transferred, _, _ = load(result.models["AD"])
    fresh, _, _ = load(scratch.models["AD"])
    assert any(not torch.allclose(a, b) for a, b in zip(transferred.parameters(), fresh.parameters()))
    # and a rerun with the base model's checkpoint resumes it instead of training it again
    resaved: dict[str, dict] = {}
    again = ClassCheckpoints(every=1000, save=lambda key, state: resaved.__setitem__(key, state), load=saved.get)
    rerun = augment(slices_cohort, tmp_path / "again", target={"AD": 4}, config=config, checkpoints=again)
    for key in (BASE_KEY, "AD"):  # both were complete: their histories did not grow
        assert len(resaved[key]["history"]) == len(saved[key]["history"])
    resumed, _, _ = load(rerun.models["AD"])
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), transferred.parameters()))
