"""Counterfactual scans (models/counterfactual.py) and the generator strategies behind augment.

The exogenous noise of a chain point must invert exactly for every architecture and chain space;
a counterfactual is its source scan plus the model's class shift (the subject's own residual kept);
augment's counterfactual and interpolation generators say in every sidecar which real subject a
scan is derived from.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from pydantic import ValidationError

from models.augment import augment
from models.config import ModelConfig, SamplerConfig
from models.counterfactual import (
    Variations,
    abduct,
    class_shift,
    counterfactuals,
    interpolations,
    variations,
)
from models.factory import build_model
from models.options import AugmentConfig
from models.samplers import build_sampler

CONFIGS = {
    "mlp centered, 2 layers": dict(arch="mlp", data_shape=(1, 8, 8), latent_dims=[3, 2], hidden=(16,),
                                   parameterization="centered"),
    "mlp noncentered": dict(arch="mlp", data_shape=(1, 8, 8), latent_dims=[3, 2], hidden=(16,),
                            parameterization="noncentered"),
    "hconv centered": dict(arch="hconv", data_shape=(1, 16, 16), latent_dims=[4], latent_channels=(2,),
                           channels=(4, 8), hidden=(16,), parameterization="centered"),
    "hconv noncentered": dict(arch="hconv", data_shape=(1, 16, 16), latent_dims=[4], latent_channels=(2,),
                              channels=(4, 8), hidden=(16,), parameterization="noncentered"),
}


def conditional(name: str):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_classes=2, **CONFIGS[name]))
    with torch.no_grad():  # distinct class priors, so moving a scan's class moves its latents
        model.class_prior.copy_(torch.randn_like(model.class_prior) * 0.5)
    return model.eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_exogenous_noise_inverts_and_moves_the_top_layer_by_the_class_prior(name):
    model = conditional(name)
    u = model.sample_prior(5, torch.Generator().manual_seed(1), y=0)
    with torch.no_grad():
        eps = model.exogenous(u, y=0)
        torch.testing.assert_close(model.from_exogenous(eps, y=0), u, atol=1e-5, rtol=1e-5)
        moved = model.from_exogenous(eps, y=1)
    top = model.latent_dims[-1]
    if model.noncentered:  # the chain already holds the noise: the class acts in decoding only
        torch.testing.assert_close(moved, u)
    else:  # z_top' = m_1 + s_1 (z_top - m_0) / s_0
        m, log_s = model.class_prior.detach().chunk(2, dim=-1)
        from models.vae import LOG_STD_RANGE, soft_bound

        s = soft_bound(log_s, *LOG_STD_RANGE).exp()
        expected = m[1] + s[1] * (u[:, -top:] - m[0]) / s[0]
        torch.testing.assert_close(moved[:, -top:], expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(moved, u)


def test_a_counterfactual_is_its_source_plus_the_models_class_shift():
    model = conditional("hconv centered")
    x = torch.rand(6, 1, 16, 16) * 0.8 + 0.1
    cf, shift, info = counterfactuals(model, None, x, 0, 1, how="mean", value_range=(-10.0, 10.0))
    with torch.no_grad():
        u = model.encode(x, y=0)[0]
        expected = model.decode(model.from_exogenous(model.exogenous(u, y=0), y=1), y=1) - model.decode(u, y=0)
    torch.testing.assert_close(shift, expected)
    torch.testing.assert_close(cf, x + expected)  # the subject's own residual x - decode(u) is kept
    assert info.accept is None and info.draws == 1
    # moving a scan to its own class changes nothing
    same, zero, _ = counterfactuals(model, None, x, 0, 0, how="mean")
    assert float(zero.abs().max()) < 1e-5 and torch.allclose(same, x.clamp(0, 1), atol=1e-5)
    # clipped to the preprocessed range by default
    clipped, _, _ = counterfactuals(model, None, x, 0, 1, how="mean")
    assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1


def test_mcmc_abduction_runs_the_frozen_kernel_and_is_reproducible():
    model = conditional("mlp centered, 2 layers")
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=3, step_size=0.05), model.latent_dim)
    sampler.train()  # abduction must freeze it and put it back as it was
    x = torch.rand(4, 1, 8, 8)
    state = {k: v.clone() for k, v in sampler.state_dict().items()}
    u, info = abduct(model, sampler, x, 1, "mcmc", draws=3, steps=4, generator=torch.Generator().manual_seed(2))
    assert u.shape == (12, model.latent_dim) and info.steps == 4 and info.draws == 3
    assert 0.0 <= info.accept <= 1.0
    assert sampler.training and all(torch.equal(v, sampler.state_dict()[k]) for k, v in state.items())
    again, _ = abduct(model, sampler, x, 1, "mcmc", draws=3, steps=4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(u, again)
    shift = class_shift(model, u, 1, 0, rows=4)
    assert shift.shape == x.shape


def test_interpolations_lie_between_their_two_subjects():
    model = conditional("mlp centered, 2 layers")
    x = torch.rand(3, 1, 8, 8)
    # t = 0 is the first subject itself: its decoded latent plus its own residual
    scans, _ = interpolations(model, None, x, 1, [(0, 1), (2, 1)], [0.0, 1.0], how="mean",
                              value_range=(-10.0, 10.0))
    torch.testing.assert_close(scans[0], x[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scans[1], x[1], atol=1e-5, rtol=1e-5)
    mid, _ = interpolations(model, None, x, 1, [(0, 1)], [0.5], how="mean")
    assert not torch.allclose(mid[0], x[0]) and not torch.allclose(mid[0], x[1])


def test_a_variation_is_its_subject_moved_by_the_other_class_difference():
    model = conditional("mlp centered, 2 layers")
    x, other = torch.rand(2, 1, 8, 8), torch.rand(4, 1, 8, 8)
    wide = (-10.0, 10.0)
    # two identical majority subjects: no difference, so the subject comes back as its own scan
    same, _ = variations(model, None, x, 1, other[[0, 0]], 0, [(0, 0, 1), (1, 1, 0)], how="mean", value_range=wide)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=1e-5)
    # a real difference moves it: by the decoded move alone (its residual kept), growing with scale
    picks = [(0, 2, 3), (1, 0, 1)]
    small, _ = variations(model, None, x, 1, other, 0, picks, scale=0.25, how="mean", value_range=wide)
    large, _ = variations(model, None, x, 1, other, 0, picks, scale=1.0, how="mean", value_range=wide)
    moved_small, moved_large = (small - x).flatten(1).norm(dim=1), (large - x).flatten(1).norm(dim=1)
    assert (moved_small > 1e-4).all() and (moved_large > moved_small).all()
    # swapping the pair moves the subject the other way: to first order the opposite change
    back, _ = variations(model, None, x, 1, other, 0, [(0, 3, 2), (1, 1, 0)], scale=0.25, how="mean",
                         value_range=wide)
    assert torch.nn.functional.cosine_similarity((small - x).flatten(1), (back - x).flatten(1)).max() < 0


def test_variations_abduct_each_subject_once_across_redraws():
    model = conditional("mlp centered, 2 layers")
    x, other = torch.rand(2, 1, 8, 8), torch.rand(5, 1, 8, 8)
    moving = Variations(model, None, x, 1, other, 0, how="mean")
    first = moving([(0, 0, 1), (1, 2, 3)], scale=0.5)
    assert sorted(moving._other) == [0, 1, 2, 3]  # only the majority subjects a pick used
    again = moving([(0, 0, 1), (1, 3, 4)], scale=0.5)
    assert sorted(moving._other) == [0, 1, 2, 3, 4]
    torch.testing.assert_close(again[0], first[0])  # the same latents, not a new abduction
    assert moving([], scale=0.5).shape == (0, 1, 8, 8)


TINY = {"preprocess": {"spatial_dims": 2, "target_shape": [16, 16], "target_spacing": None},
        "model": {"arch": "mlp", "latent_dims": [4], "hidden": [32]},
        "sampler": {"kind": "mala", "n_steps": 2},
        "train": {"batch_size": 4, "threads": 1},
        "pretrain_steps": 20, "mcmc_steps": 6, "retrains": 0, "check_steps": 10}


def _synthetic_rows(out):
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return rows, [r for r in rows if r["synthetic"] == "true"]


def test_augment_counterfactuals_name_their_source_subject(slices_cohort, tmp_path):
    out = tmp_path / "cf"
    result = augment(slices_cohort, out, target={"AD": 4},
                     config=AugmentConfig(**TINY, generator="counterfactual", abduction_steps=2))
    rows, synthetic = _synthetic_rows(out)
    assert len(synthetic) == 4 and {r["label"] for r in synthetic} == {"AD"}
    real_cn = {r["path"] for r in rows if r["synthetic"] == "false" and r["label"] == "CN"}
    sources = []
    for row in synthetic:
        sidecar = json.loads((out / row["path"].replace(".nii.gz", ".json").replace(".png", ".json")).read_text())
        assert sidecar["generator"] == "counterfactual" and sidecar["derived_from_real_subject"] is True
        assert sidecar["source"] in real_cn and sidecar["source_class"] == "CN"
        assert sidecar["rms_to_source"] > 0 and sidecar["rms_to_nearest_AD_train_scan"] > 0
        sources.append(sidecar["source"])
    assert len(set(sources)) == 4  # one scan per source subject
    info = result.metrics["classes"]["AD"]
    assert info["generator"]["kind"] == "counterfactual" and info["generator"]["abduction"] == "mcmc"
    assert 0 <= info["generator"]["abduction_accept"] <= 1
    assert info["generator"]["distance_to_source"]["median"] > 0
    summary = (out / "report" / "summary.txt").read_text()
    assert "generator counterfactual (mcmc abduction)" in summary and "fidelity gate" in summary
    # more than the majority's subjects: one scan each, and the shortfall said
    short = augment(slices_cohort, tmp_path / "short", target={"AD": 9},
                    config=AugmentConfig(**TINY, generator="counterfactual", abduction="mean"))
    assert short.synthetic_counts["AD"] == 6
    assert short.metrics["classes"]["AD"]["generator"]["short_of_sources"] == 3


def test_augment_interpolations_name_both_subjects(slices_cohort, tmp_path):
    out = tmp_path / "ip"
    # near_copies keep: with 3 tiny AD slices two can lie so close that every mix of them is a
    # near-copy (then, by default, redrawn and finally left out; the report counts it)
    result = augment(slices_cohort, out, target={"AD": 3},
                     config=AugmentConfig(**TINY, generator="interpolation", abduction="mean", near_copies="keep"))
    assert result.metrics["classes"]["AD"]["generator"]["kind"] == "interpolation"
    rows, synthetic = _synthetic_rows(out)
    real_ad = {r["path"] for r in rows if r["synthetic"] == "false" and r["label"] == "AD"}
    assert len(synthetic) == 3
    for row in synthetic:
        sidecar = json.loads((out / row["path"].replace(".nii.gz", ".json").replace(".png", ".json")).read_text())
        assert sidecar["generator"] == "interpolation" and 0.25 <= sidecar["weight"] <= 0.75
        assert len(set(sidecar["sources"])) == 2 and set(sidecar["sources"]) <= real_ad


def test_augment_variations_name_their_subject_and_the_majority_pair(slices_cohort, tmp_path):
    out = tmp_path / "var"
    result = augment(slices_cohort, out, target={"AD": 4},
                     config=AugmentConfig(**TINY, generator="variation", abduction_steps=2, near_copies="keep"))
    info = result.metrics["classes"]["AD"]["generator"]
    assert info["kind"] == "variation" and info["scale"] == 0.5 and 0 <= info["abduction_accept"] <= 1
    rows, synthetic = _synthetic_rows(out)
    real = {lab: {r["path"] for r in rows if r["synthetic"] == "false" and r["label"] == lab} for lab in ("AD", "CN")}
    assert len(synthetic) == 4
    subjects = []
    for row in synthetic:
        sidecar = json.loads((out / row["path"].replace(".nii.gz", ".json").replace(".png", ".json")).read_text())
        assert sidecar["generator"] == "variation" and sidecar["derived_from_real_subject"] is True
        assert sidecar["source"] in real["AD"] and sidecar["rms_to_source"] > 0
        assert len(set(sidecar["variation_from"])) == 2 and set(sidecar["variation_from"]) <= real["CN"]
        subjects.append(sidecar["source"])
    # the class's subjects in turn: 4 scans from 3 AD train subjects use every one of them
    assert set(subjects) == real["AD"] and len(real["AD"]) == 3


def test_the_variation_near_copy_rule_refuses_its_source_back_and_other_subjects():
    from models.generators import _variation_near

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    config = AugmentConfig()
    # handed back unchanged: no change from its source
    assert _variation_near(x.clone(), x, [0, 1, 2], config).all()
    # another subject of the class: a near-copy of that one
    assert _variation_near(x[[1, 2, 0]], x, [0, 1, 2], config).all()
    # its source moved well away (a fifth of the way to another subject): kept
    moved = x + 0.2 * (x[[1, 2, 0]] - x)
    assert not _variation_near(moved, x, [0, 1, 2], config).any()
    assert not _variation_near(x.clone(), x, [0, 1, 2], AugmentConfig(near_copies="keep")).any()


def test_every_report_has_sharpness_and_a_fidelity_gate(slices_cohort, tmp_path):
    result = augment(slices_cohort, tmp_path / "agg", target={"AD": 4}, config=AugmentConfig(**TINY, generator="aggregate"))
    info = result.metrics["classes"]["AD"]
    assert info["generator"]["kind"] == "aggregate"
    assert info["sharpness"]["gradient_energy_ratio"] > 0 and info["sharpness"]["band"] == [0.9, 1.1]
    assert 0 <= info["fidelity"]["two_sample_auroc"] <= 1 and 0 <= info["fidelity"]["reference_share"] <= 1
    assert "utility" not in info  # only when asked
    summary = (tmp_path / "agg" / "report" / "summary.txt").read_text()
    assert "sharpness: gradient energy synthetic / real" in summary and "two-sample AUROC" in summary


def test_the_default_generator_is_variation_with_the_shared_model_and_aggregate_without():
    assert AugmentConfig().generator == "variation" and AugmentConfig().model_scope == "shared"
    # choosing a per-class scope alone is valid: its default generator is the aggregate draws
    assert AugmentConfig(model_scope="per_class").generator == "aggregate"
    assert AugmentConfig(model_scope="transfer", generator=None).generator == "aggregate"
    assert AugmentConfig(generator="interpolation").generator == "interpolation"


def test_counterfactual_and_interpolation_need_the_shared_model():
    with pytest.raises(ValidationError, match="generator: counterfactual needs model_scope shared"):
        AugmentConfig(generator="counterfactual", model_scope="per_class")
    with pytest.raises(ValidationError, match="generator: interpolation needs model_scope shared"):
        AugmentConfig(generator="interpolation", model_scope="transfer")
    with pytest.raises(ValidationError, match="generator: variation needs model_scope shared"):
        AugmentConfig(generator="variation", model_scope="per_class")
