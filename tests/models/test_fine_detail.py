"""Fine detail: a new scan carries the residual of the training scan whose reconstruction is
nearest it, before the near-copy check judges it (models/fine_detail.py)."""

from __future__ import annotations

import pytest
import torch

from models.conditional import ClassView
from models.config import ModelConfig
from models.factory import build_model
from models.fine_detail import FineDetail
from models.generators import draw_synthetic
from models.options import AugmentConfig
from models.report import near_copy_threshold, nearest_real


def _model(n_classes: int = 0, arch: str = "conv", **extra):
    torch.manual_seed(0)
    cfg = ModelConfig(data_shape=(1, 8, 8, 8), arch=arch, latent_dims=[3], channels=(4, 8), hidden=(16,),
                      n_classes=n_classes, **extra)
    return build_model(cfg).eval()


def _scans(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_reconstruction_plus_residual_is_the_training_scan():
    model, x = _model(), _scans()
    detail = FineDetail(model, x)
    with torch.no_grad():
        recon = model.decode(model.encode(x)[0])
    assert torch.allclose(detail.reconstructions, recon, atol=1e-6)
    # at its own reconstruction, each training scan comes back exactly
    assert torch.allclose(detail(detail.reconstructions), x, atol=1e-6)


class _Coarse(torch.nn.Module):
    """A stand-in autoencoder that keeps only the coarse scale (2^3 block means): its
    reconstructions differ per scan, as a trained VAE's do, and miss the fine detail."""

    def __init__(self, batches: list[torch.Tensor] | None = None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # where callers look for the device
        self.batches = list(batches or [])
        self.cfg = type("Cfg", (), {"data_shape": (1, 8, 8, 8)})()

    def encode(self, x):
        coarse = torch.nn.functional.avg_pool3d(x, 2)
        return coarse, torch.zeros_like(coarse)

    def decode(self, u):
        return torch.nn.functional.interpolate(u, scale_factor=2, mode="nearest")

    def sample(self, n: int, generator=None) -> torch.Tensor:
        batch = self.batches.pop(0) if len(self.batches) > 1 else self.batches[0]
        return batch[:n].clone()


def test_each_scan_gets_the_residual_of_the_nearest_reconstruction():
    x = _scans()
    detail = FineDetail(_Coarse(), x)
    g = torch.Generator().manual_seed(1)
    new = detail.reconstructions[[2, 0, 3]] + 0.01 * torch.randn(3, 1, 8, 8, 8, generator=g)
    assert detail.nearest(new).tolist() == [2, 0, 3]
    assert torch.allclose(detail(new) - new, detail.residuals[[2, 0, 3]])
    # the nearest is the same whichever scan a residual is added to: distances are to reconstructions
    assert torch.equal(detail.nearest(new), nearest_real(detail.reconstructions, new)[1])


def test_a_class_view_of_a_conditional_model_gets_its_class_reconstructions():
    model, x = _model(n_classes=2), _scans()
    view = ClassView(model, 1)
    detail = FineDetail(view, x)
    with torch.no_grad():
        recon_1 = model.decode(model.encode(x, y=1)[0], y=1)
        recon_0 = model.decode(model.encode(x, y=0)[0], y=0)
    assert torch.allclose(detail.reconstructions, recon_1, atol=1e-6)
    assert not torch.allclose(detail.reconstructions, recon_0, atol=1e-4)


def test_a_draw_at_a_reconstruction_becomes_that_scan_and_is_redrawn_not_delivered():
    x = _scans(seed=3) * 0.8 + 0.1
    detail = FineDetail(_Coarse(), x)
    novel = detail.reconstructions.mean(0, keepdim=True).repeat(2, 1, 1, 1, 1) + 0.25  # far from every scan
    first = torch.cat([detail.reconstructions[1:2], novel[:1]])
    scans, near = draw_synthetic(_Coarse([first, novel]), 2, x, seed=0, fine_detail="nearest")
    assert near["replaced"] == 1 and near["left_out"] == 0 and near["fine_detail"] == "nearest"
    assert torch.allclose(scans, detail(novel).clamp(0, 1), atol=1e-6)
    assert float(nearest_real(x, scans)[0].min()) >= near_copy_threshold(x, 0.5)
    # without fine detail the same draw is only the reconstruction, not a copy: it is delivered
    plain, near = draw_synthetic(_Coarse([first, novel]), 2, x, seed=0)
    assert near["fine_detail"] == "none" and near["replaced"] == 0 and torch.allclose(plain, first.clamp(0, 1))


def test_fine_detail_is_an_option_off_by_default():
    # another subject's residual is borrowed detail (issue 22): only on request
    assert AugmentConfig().fine_detail == "none"
    assert AugmentConfig(fine_detail="nearest").fine_detail == "nearest"
    with pytest.raises(ValueError):
        AugmentConfig(fine_detail="everything")


def test_no_training_scans_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one training scan"):
        FineDetail(_model(), _scans()[:0])


def test_a_scan_that_detail_keeps_a_copy_is_delivered_as_its_decoder_mean():
    # a model that only ever draws training scan 1's reconstruction: with its detail it is scan 1
    x = _scans(seed=3) * 0.8 + 0.1
    detail = FineDetail(_Coarse(), x)
    model = _Coarse([detail.reconstructions[1:2].repeat(2, 1, 1, 1, 1)])
    scans, near = draw_synthetic(model, 2, x, seed=0, max_redraws=3, fine_detail="nearest")
    assert near["replaced"] == 6 and near["left_out"] == 0 and near["without_detail"] == [0, 1]
    assert torch.allclose(scans, detail.reconstructions[[1, 1]].clamp(0, 1))
    assert float(nearest_real(x, scans)[0].min()) >= near_copy_threshold(x, 0.5)
    # a decoder mean that is itself a copy is still left out: scans the coarse model reconstructs
    # exactly (no detail at all), and a model that only ever draws scan 1
    coarse = _Coarse()
    x = coarse.decode(coarse.encode(x)[0])
    scans, near = draw_synthetic(_Coarse([x[1:2].repeat(2, 1, 1, 1, 1)]), 2, x, seed=0, max_redraws=1,
                                 fine_detail="nearest")
    assert len(scans) == 0 and near["left_out"] == 2 and near["without_detail"] == []


def test_with_a_sigma_only_the_detail_finer_than_it_is_kept():
    # a model that reconstructs nothing (zeros), so the detail is the scan itself: a linear ramp
    # (coarse) plus a voxel checkerboard (fine). A Gaussian of 1 voxel leaves a linear ramp as it
    # is away from the border and all but removes the checkerboard, so the high-passed detail
    # there is the checkerboard alone.
    class _Nothing(_Coarse):
        def decode(self, u):
            return torch.zeros(len(u), 1, 8, 8, 8)

    ramp = torch.linspace(0, 0.7, 8).view(1, 1, 8, 1, 1).expand(1, 1, 8, 8, 8)
    idx = torch.arange(8)
    checker = 0.05 * (-1.0) ** (idx.view(8, 1, 1) + idx.view(1, 8, 1) + idx.view(1, 1, 8))
    x = (ramp + checker).contiguous()
    full, fine = FineDetail(_Nothing(), x), FineDetail(_Nothing(), x, sigma=1.0)
    inner = (slice(None), slice(None), slice(3, 5), slice(3, 5), slice(3, 5))  # away from the zero padding
    assert torch.allclose(full.residuals, x)
    assert torch.allclose(fine.residuals[inner], checker[3:5, 3:5, 3:5].expand(1, 1, 2, 2, 2), atol=0.01)


def test_with_one_training_scan_no_detail_is_added():
    # no second scan, so no near-copy threshold: real detail could turn every draw into that scan
    x = _scans(1, seed=3)
    draws = torch.full((2, 1, 8, 8, 8), 0.5)
    scans, near = draw_synthetic(_Coarse([draws]), 2, x, seed=0, fine_detail="nearest")
    assert near["threshold"] == 0 and near["fine_detail"] == "none"
    assert torch.equal(scans, draws)
