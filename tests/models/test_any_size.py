"""Issue 25, item 1: the conv networks take any spatial size. They pad the data inside the
network up to the grid that 2 ** len(channels) divides and crop their output back, so the
model's input and output keep the data's own shape (28 x 28 images, odd 3-D sizes)."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import load, save
from models.config import ModelConfig, SamplerConfig, TrainConfig
from models.factory import build_model
from models.samplers import build_sampler
from models.training import train

CASES = [
    ("conv", (1, 28, 28), {}),
    ("hconv", (1, 28, 28), {"latent_channels": (2, 3)}),
    ("conv", (1, 15, 17, 13), {}),
    ("hconv", (1, 15, 17, 13), {"latent_channels": (2,)}),
]


def _model(arch, shape, extra, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(data_shape=shape, arch=arch, latent_dims=[4], channels=(4, 8),
                                   hidden=(16,), likelihood="logistic", **extra))


def _x(shape, n=6, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("arch", "shape", "extra"), CASES)
def test_any_size_runs_forward_and_backward_at_its_own_shape(arch, shape, extra):
    model = _model(arch, shape, extra)
    # the networks work on the next multiple of 4 (two halvings), the data keeps its shape
    assert model.cfg.grid_shape == tuple(-(-s // 4) * 4 for s in shape[1:])
    x = _x(shape, 3)
    u, log_q = model.rsample(x, n=2, generator=torch.Generator().manual_seed(1))
    assert model.decode(u).shape == (6, *shape)
    loss = -(model.log_joint(x.repeat(2, *[1] * len(shape)), u) - log_q).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


@pytest.mark.parametrize(("arch", "shape", "extra"), CASES)
def test_any_size_trains_samples_and_reloads(arch, shape, extra, tmp_path):
    model = _model(arch, shape, extra)
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=2), model.latent_dim)
    x = _x(shape, 8)
    history = train(model, sampler, x, TrainConfig(pretrain_epochs=2, epochs=1, batch_size=4))
    assert history.records and all(torch.isfinite(torch.tensor(r.elbo)) for r in history.records)
    drawn = model.sample(3, generator=torch.Generator().manual_seed(2))
    assert drawn.shape == (3, *shape) and torch.isfinite(drawn).all()
    # the padding holds no parameters: a saved model reloads with the same output
    folder = save(tmp_path / "m", model, sampler, {})
    again, _, _ = load(folder)
    u = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.decode(u), model.decode(u))


def test_padding_does_not_rename_the_encoders_parameters():
    """Models saved before the padding (sizes divisible by 2 ** len(channels)) still load: the
    encoder's stages keep the parameter names 0, 1, ...; the pad is a parameter-free module."""
    model = _model("conv", (1, 16, 16), {})
    names = [n for n, _ in model.encoder.named_parameters()]
    assert names and all(n.split(".")[0].isdigit() for n in names)
    assert model.cfg.grid_shape == (16, 16)

