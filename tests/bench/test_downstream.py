"""Fast checks of the pieces the downstream benchmarks share: extra scan sources (bench/cohorts.py),
the classifier recipes (models/classifier.py) and their scores (bench/metrics.py)."""

import pytest
import torch

from bench.cohorts import classical_copies, duplicate_copies
from bench.metrics import score
from models.classifier import SmallCNN, balanced_batch, train_classifier, uniform_batch


def test_extra_scan_sources_and_classifier_recipe():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 16, 16, 16)
    dup = duplicate_copies(x, 7, seed=0)
    assert dup.shape == (7, 1, 16, 16, 16)
    assert all(any(torch.equal(d, r) for r in x) for d in dup)  # every duplicate is a real scan
    aug = classical_copies(x, 4, seed=0)
    assert aug.shape == (4, 1, 16, 16, 16) and 0 <= aug.min() and aug.max() <= 1
    assert not torch.equal(aug[0], x[0])  # deformed, not copied
    assert torch.equal(classical_copies(x, 2, seed=1), classical_copies(x, 2, seed=1))  # seeded
    assert SmallCNN()(x).shape == (3, 2)

    y = torch.tensor([0, 0, 1, 1, 0, 1]).long()
    xs = torch.cat([x, x])
    net = train_classifier(xs, y, seed=0, steps=2, batch=4, lr=1e-3, recipe="weighted")
    s = score(net, xs, y)
    assert set(s) == {"balanced_accuracy", "ad_recall", "auroc", "p_ad"}
    assert all(0.0 <= s[k] <= 1.0 for k in ("balanced_accuracy", "ad_recall", "auroc"))
    assert len(s["p_ad"]) == len(y) and all(0.0 <= p <= 1.0 for p in s["p_ad"])
    balanced = train_classifier(xs, y, seed=0, steps=2, batch=4, lr=1e-3, recipe="balanced")
    assert any(not torch.equal(a, b) for a, b in zip(net.parameters(), balanced.parameters()))
    with pytest.raises(ValueError, match="recipe"):
        train_classifier(xs, y, seed=0, steps=1, batch=4, lr=1e-3, recipe="oversampled")


def test_balanced_minibatches_hold_half_of_each_class():
    y = torch.tensor([0] * 60 + [1] * 6)  # the hard cohort's 60 CN + 6 AD
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = balanced_batch(y, 16, g)
        assert len(idx) == 16 and int(y[idx].sum()) == 8  # 8 AD in every batch
    uniform = torch.cat([uniform_batch(y, 16, g) for _ in range(200)])
    # uniform batches: AD at its share of the scans, 6/66 = 0.091 (3200 draws: sd 0.005)
    assert abs(float(y[uniform].float().mean()) - 6 / 66) < 0.03


def test_score_gives_scikit_learns_figures():
    # bench/metrics.score replaced scikit-learn's metrics with models/classifier.py's: same figures
    from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

    torch.manual_seed(1)
    x = torch.rand(12, 1, 8, 8, 8)
    y = torch.tensor([0] * 7 + [1] * 5)
    net = train_classifier(x, y, seed=0, steps=3, batch=4)
    s = score(net, x, y)
    p = torch.tensor(s["p_ad"])
    pred = (p >= 0.5).long()
    assert s["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)  # p_ad is rounded to 4 places
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert s["ad_recall"] == pytest.approx(recall_score(y, pred, zero_division=0))


def test_montage_names_the_seed_it_draws(tmp_path):
    from PIL import Image

    from bench.plots import plot_montage

    torch.manual_seed(0)
    path = tmp_path / "montage.png"
    plot_montage([("real", torch.rand(2, 1, 8, 8, 8)), ("synthetic", torch.rand(3, 1, 8, 8, 8))], path, seed=7)
    assert Image.open(path).text["Title"].startswith("AD scans, seed 7:")
