"""The augment report's classifier checks (models/checks.py), with the real-only classifiers
trained on a background thread while the generative model fits, or in line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from models.checks import ClassifierChecks
from models.options import AugmentConfig
from models.training import TrainingCancelled


def scans(n: int, bright: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, 8, generator=g) * 0.3
    x[:, :, 2:6, 2:6, 2:6] += bright
    return x


def cohort():
    x = torch.cat([scans(12, 0.0, 0), scans(4, 0.4, 1)])
    labels = ["CN"] * 12 + ["AD"] * 4
    draws = SimpleNamespace(scans=scans(8, 0.4, 2), sources=[[12 + k % 4] for k in range(8)])
    config = AugmentConfig(check_utility=True, check_steps=6, utility_folds=3, seed=4)
    return x, labels, list(range(16)), config, draws


@pytest.fixture
def threads():
    """Sets torch's thread count for one test and restores it after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_classifiers_side_by_side_and_beside_the_fit_give_the_same_report(threads):
    x, labels, train, config, draws = cohort()
    threads(1)  # one worker: every classifier one after the other
    in_turn = ClassifierChecks(x, labels, train, config, lambda *_: None)
    expected = in_turn.class_metrics("AD", draws)
    in_turn.close()
    threads(2)  # two workers of one thread each: the same arithmetic, side by side
    checks = ClassifierChecks(x, labels, train, config, lambda *_: None)
    torch.manual_seed(0)
    checks.start_real_only(1)
    # the fitting meanwhile draws from torch's global generator: the classifiers must not move it
    fitting_draws = [torch.randn(64) for _ in range(50)]
    metrics = checks.class_metrics("AD", draws)
    checks.close()
    torch.manual_seed(0)
    assert all(torch.equal(a, torch.randn(64)) for a in fitting_draws)
    assert metrics == expected
    assert metrics["utility"]["folds"] == 3 and metrics["fidelity"]["reference_share"] is not None
    assert torch.get_num_threads() == 2  # the workers' one thread each is theirs alone


def test_a_closed_check_starts_no_further_classifier(threads):
    threads(2)
    x, labels, train, config, _ = cohort()
    checks = ClassifierChecks(x, labels, train, config.model_copy(update={"check_steps": 200}), lambda *_: None)
    checks.start_real_only(1)  # the reference classifier first, one at a time
    checks.close()  # a cancelled job: the classifier in progress ends, no further one starts
    checks._reference.result(timeout=120)
    for future in checks._without:  # queued: cancelled; waiting for a slot: stopped when it got one
        assert future.cancelled() or isinstance(future.exception(timeout=120), TrainingCancelled)
    assert all(fold.without is None for fold in checks._folds)


def test_the_sharpness_rule_flags_blur_and_grain_and_needs_a_reference():
    """One rule for augment's report and for sample (which only has the model's recorded energy)."""
    import torch.nn.functional as F

    from models.checks import (
        TRAIN_GRADIENT_ENERGY,
        sampled_sharpness,
        sharpness,
        sharpness_warning,
        training_sharpness,
    )
    from models.report import gradient_energy

    real = scans(6, 0.4, 5)
    blurred = F.avg_pool3d(real, 3, stride=1, padding=1)  # a decoder mean's smoothness
    grainy = real + 0.2 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))
    kept = training_sharpness({"AD": real, "CN": real[:0]})
    assert kept == {TRAIN_GRADIENT_ENERGY: {"AD": pytest.approx(gradient_energy(real))}}  # an empty class: nothing

    same = sharpness(real.flip(0), kept[TRAIN_GRADIENT_ENERGY]["AD"])
    assert same["gradient_energy_ratio"] == pytest.approx(1.0) and not same["warning"]
    smooth = sampled_sharpness(kept, "AD", blurred)
    assert smooth["gradient_energy_ratio"] < 0.5 and smooth["warning"]
    assert "smoother" in sharpness_warning("AD", smooth)
    assert "grainier" in sharpness_warning("AD", sharpness(grainy, gradient_energy(real)))
    # a model saved before it kept the energy, another class, or no scans: nothing to say
    assert sampled_sharpness({}, "AD", blurred) is None
    assert sampled_sharpness(kept, "CN", blurred) is None and sharpness(real[:0], 1.0) is None
