"""Fast smoke test of bench/downstream.py's pieces (the experiment itself is the script)."""

import torch

from bench.downstream import SmallCNN, classical_copies, duplicate_copies, score, train_classifier


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
    net = train_classifier(xs, y, seed=0, steps=2, batch=4, lr=1e-3)
    s = score(net, xs, y)
    assert set(s) == {"balanced_accuracy", "ad_recall", "auroc"}
    assert all(0.0 <= v <= 1.0 for v in s.values())
