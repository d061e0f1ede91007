"""The augment report's classifier checks (models/checks.py), with the real-only classifiers
trained on a background thread while the generative model fits, or in line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from models.checks import ClassifierChecks
from models.options import AugmentConfig


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
def one_thread():
    """One torch thread on both sides: the same arithmetic, so the same figures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_real_only_classifiers_trained_beside_the_fit_give_the_same_report(one_thread):
    x, labels, train, config, draws = cohort()
    inline = ClassifierChecks(x, labels, train, config, lambda *_: None).class_metrics("AD", draws)
    checks = ClassifierChecks(x, labels, train, config, lambda *_: None)
    torch.manual_seed(0)
    checks.start_real_only(1)
    # the fitting meanwhile draws from torch's global generator: the classifiers must not move it
    fitting_draws = [torch.randn(64) for _ in range(50)]
    metrics = checks.class_metrics("AD", draws)
    checks.close()
    torch.manual_seed(0)
    assert all(torch.equal(a, torch.randn(64)) for a in fitting_draws)
    assert metrics == inline
    assert metrics["utility"]["folds"] == 3 and metrics["fidelity"]["reference_share"] is not None


def test_a_closed_check_stops_its_background_classifiers():
    x, labels, train, config, _ = cohort()
    config = config.model_copy(update={"check_steps": 200})
    checks = ClassifierChecks(x, labels, train, config, lambda *_: None)
    checks.start_real_only(1)
    checks.close()  # a cancelled job: the classifier in progress ends, no further one starts
    checks._background.join(timeout=120)
    assert not checks._background.is_alive()
    assert all(fold.without is None for fold in checks._folds)
