"""augment(model_scope="shared"): one class-conditional model for the whole cohort, sampled per
class, written like per-class output (real NIfTI read back with nibabel)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from models.augment import augment
from models.data import make_demo_slices
from models.options import AugmentConfig

TINY = {"preprocess": {"spatial_dims": 2, "target_shape": [16, 16], "target_spacing": None},
        "model": {"arch": "mlp", "latent_dims": [4], "hidden": [32]},
        "sampler": {"kind": "mala", "n_steps": 2},
        "train": {"batch_size": 4, "threads": 1},
        "pretrain_steps": 20, "mcmc_steps": 6, "near_copies": "keep"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("scope") / "cohort"
    make_demo_slices(root, n_control=6, n_ad=3, shape=(16, 16), seed=0)
    return root


def test_a_shared_model_learns_every_class_and_draws_the_minority(cohort, tmp_path):
    out = tmp_path / "out"
    result = augment(cohort, out, target={"AD": 5}, config=AugmentConfig(**TINY, model_scope="shared"))

    assert set(result.models) == {"shared"}  # one model for the cohort, none per class
    meta = json.loads((out / "models" / "shared" / "config.json").read_text())
    assert meta["model"]["n_classes"] == 2
    assert meta["meta"]["classes"] == ["AD", "CN"]
    assert len(meta["meta"]["trained_on"]) == 9  # the majority's scans trained it too

    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    synthetic = [r for r in rows if r["synthetic"] == "true"]
    assert len(synthetic) == 5 and {r["label"] for r in synthetic} == {"AD"}
    real_img = nib.load(out / next(r["path"] for r in rows if r["synthetic"] == "false"))
    for row in synthetic:
        img = nib.load(out / row["path"])
        data = np.asarray(img.dataobj)
        assert data.shape == real_img.shape and np.allclose(img.affine, real_img.affine)
        assert np.isfinite(data).all() and 0.0 <= data.min() and data.max() <= 1.0
    info = result.metrics["classes"]["AD"]
    assert info["model_scope"] == "shared"
    # The report says what the generator learned from: every class's train scans, not only AD's.
    assert info["n_train"] == 3 and info["n_trained_on"] == 9 and len(info["trained_on"]) == 9
    summary = (out / "report" / "summary.txt").read_text()
    assert "shared class-conditional generator trained on these 9 scans of every class (3 of this class)" in summary
    assert "generator trained on these 3 scans only" not in summary


def test_per_class_stays_the_default(cohort, tmp_path):
    result = augment(cohort, tmp_path / "out", target={"AD": 2}, config=AugmentConfig(**TINY))
    assert set(result.models) == {"AD"}
    assert result.metrics["classes"]["AD"]["model_scope"] == "per_class"
