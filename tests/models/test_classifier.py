"""The classifier checks (models/classifier.py): AUROC, the two-sample test, the utility self-check."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.classifier import (
    auroc,
    balanced_accuracy,
    reference_share,
    stratified_folds,
    train_classifier,
    train_without,
    two_sample_auroc,
    utility_check,
    utility_folds,
)
from models.report import gradient_energy


def test_auroc_is_the_mann_whitney_statistic():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(200, generator=g) < 0.3).long()
    score = torch.rand(200, generator=g) + 0.3 * y
    score[:20] = 0.5  # ties count half
    assert auroc(y, score) == pytest.approx(roc_auc_score(y.numpy(), score.numpy()), abs=1e-12)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    assert balanced_accuracy(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])) == pytest.approx((2 / 3 + 1) / 2)


def test_stratified_folds_cover_every_row_once_with_each_class():
    y = torch.tensor([0] * 10 + [1] * 4)
    folds = stratified_folds(y, 4, seed=3)
    assert sorted(torch.cat(folds).tolist()) == list(range(14))
    assert all(set(y[f].tolist()) == {0, 1} for f in folds)


def blobs(n: int, bright: float, seed: int, shape=(12, 12)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, *shape, generator=g) * 0.3
    x[:, :, 4:8, 4:8] += bright
    return x


def test_two_sample_test_tells_a_tell_and_not_a_twin():
    real = blobs(12, 0.5, 0)
    # a synthetic set with a tell (blurred): nearly perfectly told apart
    blurred = torch.nn.functional.avg_pool2d(blobs(12, 0.5, 1), 3, 1, 1)
    assert gradient_energy(blurred) < 0.5 * gradient_energy(real)
    assert two_sample_auroc(real, blurred, seed=0) > 0.9
    # another draw of the same distribution: near chance (12 + 12 scans: AUROC sd about 0.12)
    assert abs(two_sample_auroc(real, blobs(12, 0.5, 2), seed=0) - 0.5) < 0.3
    assert two_sample_auroc(real[:1], blurred) is None


def test_reference_share_counts_what_a_real_trained_classifier_calls_the_class():
    x = torch.cat([blobs(10, 0.0, 0), blobs(10, 0.6, 1)])
    y = torch.tensor([0] * 10 + [1] * 10)
    assert reference_share(x, y, blobs(8, 0.6, 2), 1, seed=0) >= 0.75
    assert reference_share(x, y, blobs(8, 0.0, 3), 1, seed=0) <= 0.25


def test_utility_check_scores_held_out_real_folds_and_keeps_sources_out():
    x = torch.cat([blobs(16, 0.0, 0), blobs(4, 0.4, 1)])
    y = torch.tensor([0] * 16 + [1] * 4)
    good = blobs(12, 0.4, 2)
    # synthetic scan i derived from real row i (a counterfactual of a majority subject, say)
    result = utility_check(x, y, good, 1, synthetic_sources=[[i] for i in range(12)], k=4, seed=0, steps=60)
    assert len(result.without) == len(result.with_synthetic) == 4
    assert all(w["n_synthetic"] == 0 for w in result.without)
    # a synthetic scan whose source row is held out is left out of that fold's training
    held_per_fold = [12 - w["n_synthetic"] for w in result.with_synthetic]
    assert sum(held_per_fold) == 12 and all(n > 0 for n in held_per_fold)
    lo, hi = result.auroc_interval
    assert lo <= result.auroc_diff <= hi
    assert result.as_dict()["helped"] in (True, False)
    # scans of the wrong kind, labelled as the class, make it worse on held-out real scans
    wrong = blobs(12, 0.0, 3)
    bad = utility_check(x, y, wrong, 1, k=4, seed=0, steps=60)
    assert bad.balanced_accuracy_diff < 0 and not bad.helped


def test_classifier_runs_in_2d_and_3d():
    for shape in ((8, 8), (8, 8, 8)):
        x = torch.rand(6, 1, *shape)
        net = train_classifier(x, torch.tensor([0, 1] * 3), seed=0, steps=2)
        assert net(x).shape == (6, 2)


def test_a_classifier_draws_only_from_its_own_seed():
    """The report trains classifiers on a thread beside the model's fitting: they must not take
    from (or reset) torch's global generator, and one seed must give one classifier."""
    x, y = blobs(8, 0.3, 0), torch.tensor([0, 1] * 4)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = train_classifier(x, y, seed=5, steps=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    again, other = train_classifier(x, y, seed=5, steps=4), train_classifier(x, y, seed=6, steps=4)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


def test_a_without_arm_trained_ahead_gives_the_same_utility_check():
    x = torch.cat([blobs(12, 0.0, 0), blobs(4, 0.4, 1)])
    y = torch.tensor([0] * 12 + [1] * 4)
    synthetic = blobs(8, 0.4, 2)
    inline = utility_check(x, y, synthetic, 1, k=4, seed=1, steps=20)
    folds = utility_folds(y, 4, seed=1)
    stop_after_two = iter([False, False, True])
    train_without(x, y, folds, steps=20, should_stop=lambda: next(stop_after_two))
    assert [f.without is not None for f in folds] == [True, True, False, False]  # stopped when asked
    ahead = utility_check(x, y, synthetic, 1, steps=20, folds=folds)  # the rest trained here
    assert ahead.as_dict() == inline.as_dict()
