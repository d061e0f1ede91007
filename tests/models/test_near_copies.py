"""Near-copies of training scans are redrawn, bounded, counted, and never delivered by default."""

from __future__ import annotations

import torch
from torch import nn

from models.generators import draw_synthetic
from models.report import memorisation_audit, near_copy_threshold


class ScriptedGenerator(nn.Module):
    """Stands in for a trained VAE whose draws we choose: each call to ``sample`` returns the
    next scripted batch (the redraw logic is what is under test, not a network)."""

    def __init__(self, batches: list[torch.Tensor]):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # where draw_synthetic looks for the device
        self.batches = list(batches)
        self.cfg = type("Cfg", (), {"data_shape": tuple(batches[0].shape[1:])})()
        self.calls: list[int] = []

    def sample(self, n: int, generator=None) -> torch.Tensor:
        self.calls.append(n)
        batch = self.batches.pop(0) if len(self.batches) > 1 else self.batches[0]
        return batch[:n].clone()


def _training_scans() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 1, 6, 6, 6, generator=g) * 0.5


def test_a_near_copy_is_replaced_by_a_new_draw_and_counted():
    train = _training_scans()
    threshold = near_copy_threshold(train, 0.5)
    novel = torch.full((3, 1, 6, 6, 6), 0.9)  # far from every training scan
    copy = train[1:2] + 0.001  # a hair away from training scan 1
    first = torch.cat([copy, novel[:2]])
    model = ScriptedGenerator([first, novel])
    scans, near = draw_synthetic(model, 3, train, seed=0)
    assert near["replaced"] == 1 and near["left_out"] == 0 and near["threshold"] == threshold
    assert model.calls == [3, 1]  # one redraw, of the one near-copy only
    audit = memorisation_audit(train, scans)
    assert len(scans) == 3 and audit["flagged"] == []


def test_redraws_are_bounded_and_a_persistent_copy_is_left_out():
    train = _training_scans()
    model = ScriptedGenerator([train[:2] + 0.001])  # only ever copies
    scans, near = draw_synthetic(model, 2, train, seed=0, max_redraws=3)
    assert len(scans) == 0 and near["left_out"] == 2 and near["replaced"] == 6
    assert model.calls == [2, 2, 2, 2]  # the first draw, then three rounds


def test_keep_delivers_near_copies_and_the_audit_flags_them():
    train = _training_scans()
    model = ScriptedGenerator([train[:2] + 0.001])
    scans, near = draw_synthetic(model, 2, train, seed=0, near_copies="keep")
    assert len(scans) == 2 and near["replaced"] == 0 and near["left_out"] == 0
    assert len(memorisation_audit(train, scans)["flagged"]) == 2


def test_draws_are_clipped_to_the_preprocessed_range():
    train = _training_scans()
    model = ScriptedGenerator([torch.full((2, 1, 6, 6, 6), 3.0)])
    scans, _ = draw_synthetic(model, 2, train, seed=0)
    assert float(scans.max()) == 1.0


def test_the_audit_of_variations_looks_past_their_own_source():
    """A variation lies near its own subject by design; it is a copy only if it lies near another."""
    train = _training_scans()
    threshold = near_copy_threshold(train, 0.5)
    altered = train[[0, 1]] + 0.02  # subjects 0 and 1, each a little altered
    copy_of_other = train[3:4] + 0.001  # says it comes from subject 2, is subject 3
    scans = torch.cat([altered, copy_of_other])
    own = [[0], [1], [2]]
    to_source = torch.stack([torch.sqrt(((s - train[o[0]]) ** 2).mean()) for s, o in zip(scans, own)])
    plain = memorisation_audit(train, scans)
    assert [f["synthetic_index"] for f in plain["flagged"]] == [0, 1, 2]  # every scan near some real scan
    audit = memorisation_audit(train, scans, own=own, to_source=to_source)
    assert [(f["synthetic_index"], f["nearest_real_index"]) for f in audit["flagged"]] == [(2, 3)]
    assert audit["nearest_excludes_own_source"] and audit["synthetic_nn"][0] > threshold
    assert audit["synthetic_to_source"]["min"] == float(to_source.min()) < threshold
    # a class of one subject leaves a variation no other scan to be near: nothing to flag, no infinity
    lone = memorisation_audit(train[:1], altered[:1], own=[[0]])
    assert lone["flagged"] == [] and lone["synthetic_nn"] == [None] and lone["synthetic_to_real_nn"] is None
