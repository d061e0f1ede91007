"""Class-conditional VAEs (issue 12, item 3): the label matters, chains target p(z | x, y),
per-class sampling distributions, save/load, and the shared-model entry point."""

from __future__ import annotations

import math

import pytest
import torch

from models.augment import AugmentConfig
from models.checkpoint import load, save
from models.conditional import ClassView
from models.config import ModelConfig, SamplerConfig, TrainConfig
from models.evaluation import log_likelihood
from models.factory import build_model
from models.samplers import build_sampler
from models.shared_model import class_view, fit_shared_model, sample_class
from models.training import train

OBS_VAR = 0.1


def _linear_conditional(parameterization: str):
    torch.manual_seed(0)
    cfg = ModelConfig(data_shape=(1, 3), arch="linear", latent_dims=[2], n_classes=2,
                      obs_log_var=math.log(OBS_VAR), learn_obs_var=False, parameterization=parameterization)
    model = build_model(cfg)
    with torch.no_grad():  # class priors far from N(0, I) and from each other
        model.class_prior.copy_(torch.tensor([[1.5, -1.0, 0.3, -0.4], [-2.0, 0.5, -0.5, 0.2]]))
    return model


def _exact_posterior(model, x: torch.Tensor, label: int):
    """p(u | x, y) in chain space for a linear-Gaussian model: decode is affine in u."""
    with torch.no_grad():
        y = torch.full((1,), label)
        d = model.latent_dim
        bias = model.decode(torch.zeros(1, d), y=y).flatten()
        weight = (model.decode(torch.eye(d), y=y.expand(d)).flatten(1) - bias).T
        prior_mean, prior_prec = torch.zeros(d), torch.eye(d)
        if model.cfg.parameterization == "centered":  # chain holds z ~ N(m_y, s_y^2)
            loc, log_std = model._top_prior(torch.nn.functional.one_hot(y, 2).float())
            prior_mean, prior_prec = loc[0], torch.diag(torch.exp(-2 * log_std[0]))
        precision = prior_prec + weight.T @ weight / OBS_VAR
        cov = torch.linalg.inv(precision)
        mean = cov @ (prior_prec @ prior_mean + weight.T @ (x.flatten() - bias) / OBS_VAR)
    return mean, cov


@pytest.mark.parametrize("parameterization", ["noncentered", "centered"])
def test_frozen_chain_leaves_the_class_posterior_invariant(parameterization):
    """Chains for rows of both classes at once, each started from exact draws of p(u | x, y),
    stay exact draws (5 standard errors on means and covariances); the two classes' posteriors
    for the same scan differ by far more than that, so the label reaches the target."""
    model = _linear_conditional(parameterization)
    x1 = torch.tensor([[[0.4, -0.2, 0.9]]])
    n = 10_000
    gen = torch.Generator().manual_seed(1)
    exact = [_exact_posterior(model, x1, k) for k in (0, 1)]
    assert (exact[0][0] - exact[1][0]).norm() > 0.3
    z0 = torch.cat([m + torch.randn(n, 2, generator=gen) @ torch.linalg.cholesky(c).T for m, c in exact])
    y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    x = x1.expand(2 * n, 1, 3)
    sampler = build_sampler(SamplerConfig(kind="mala", adaptation="fixed", step_size=0.35), 2)
    sampler.eval()
    z, infos = sampler.run(z0, lambda u: model.log_joint(x, u, y=y), n_steps=20, generator=gen)
    accept = sum(i.diagnostics["accept"] for i in infos) / len(infos)
    assert 0.2 < accept < 0.98, accept
    for k, (mean, cov) in enumerate(exact):
        zk = z[k * n:(k + 1) * n]
        assert torch.all((zk.mean(0) - mean).abs() < 5 * (cov.diagonal() / n).sqrt()), (k, zk.mean(0), mean)
        cov_se = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
        assert ((torch.cov(zk.T) - cov) / cov_se).abs().max() < 5


def _two_class_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images: class 0 bright on the left half, class 1 bright on the right half."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.2 + 0.05 * torch.rand(n, 1, 8, 8, generator=gen)
    x[y == 0, :, :, :4] += 0.6
    x[y == 1, :, :, 4:] += 0.6
    return x, y


def _left_minus_right(scans: torch.Tensor) -> float:
    return float(scans[..., :4].mean() - scans[..., 4:].mean())


@pytest.mark.parametrize("sampling", ["aggregate", "prior"])
def test_samples_follow_the_requested_class(sampling):
    x, y = _two_class_images(64, seed=0)
    cfg = ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[3], hidden=(32,), n_classes=2,
                      sampling=sampling)
    torch.manual_seed(0)
    model = build_model(cfg)
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=2), model.latent_dim)
    train(model, sampler, x, TrainConfig(pretrain_epochs=25, epochs=3, batch_size=16, lr=3e-3), labels=y)
    assert bool(model.sampling_is_fitted.all())
    gen = torch.Generator().manual_seed(3)
    left, right = model.sample(32, gen, y=0), model.sample(32, gen, y=1)
    assert _left_minus_right(left) > 0.3 and _left_minus_right(right) < -0.3
    # the aggregate posterior is fitted per class: the two classes' Gaussians differ
    assert not torch.allclose(model.sampling_loc[0], model.sampling_loc[1], atol=1e-2)


def test_label_errors_name_y():
    model = build_model(ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[2], n_classes=2))
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match="y: this model is class-conditional"):
        model.rsample(x)
    with pytest.raises(ValueError, match=r"y: class indices must lie in \[0, 1\]"):
        model.sample(2, y=2)
    with pytest.raises(ValueError, match="labels"):
        train(model, build_sampler(SamplerConfig(kind="none"), 2), x, TrainConfig(epochs=1))
    plain = build_model(ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[2]))
    with pytest.raises(ValueError, match="not class-conditional"):
        plain.sample(2, y=0)


@pytest.mark.parametrize("arch,latents", [("conv", [4, 2]), ("mlp", [3])])
def test_conditional_model_saves_and_loads(tmp_path, arch, latents):
    x, y = _two_class_images(12, seed=1)
    cfg = ModelConfig(data_shape=(1, 8, 8), arch=arch, latent_dims=latents, channels=(4, 8), hidden=(16,),
                      n_classes=2)
    model = build_model(cfg)
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=2), model.latent_dim)
    train(model, sampler, x, TrainConfig(pretrain_epochs=1, epochs=1, batch_size=6), labels=y)
    loaded, _, _ = load(save(tmp_path / "m", model, sampler))
    assert loaded.cfg.n_classes == 2
    for label in (0, 1):
        a = model.sample(3, torch.Generator().manual_seed(7), y=label)
        b = loaded.sample(3, torch.Generator().manual_seed(7), y=label)
        assert torch.equal(a, b)


def test_class_view_serves_evaluation_and_sampling():
    model = _linear_conditional("noncentered")
    x = torch.randn(4, 1, 3)
    view = ClassView(model, 1)
    log_px = log_likelihood(view, x, n_particles=50, generator=torch.Generator().manual_seed(0))
    assert log_px.shape == (4,) and torch.isfinite(log_px).all()
    # the view's density is the model's at that label, not the other one's
    u = torch.randn(4, 2)
    torch.testing.assert_close(view.log_joint(x, u), model.log_joint(x, u, y=torch.ones(4, dtype=torch.long)))
    assert not torch.allclose(view.log_joint(x, u), model.log_joint(x, u, y=0))
    assert view.sample(5).shape == (5, 1, 3)


def test_fit_shared_model_draws_the_requested_class():
    x, y = _two_class_images(40, seed=2)
    scans = {"left": x[y == 0], "right": x[y == 1][:6]}  # a 20:6 imbalance
    config = AugmentConfig(sampler=SamplerConfig(kind="mala", n_steps=2), train=TrainConfig(batch_size=8, lr=3e-3),
                           pretrain_steps=120, mcmc_steps=12)
    cfg = ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[3], hidden=(32,))
    shared = fit_shared_model(scans, cfg, config, seed=0)
    assert shared.classes == ["left", "right"] and shared.model.cfg.n_classes == 2
    assert _left_minus_right(sample_class(shared, "right", 16, seed=1)) < -0.3
    assert _left_minus_right(sample_class(shared, "left", 16, seed=1)) > 0.3
    assert class_view(shared, "right").sampling_fitted
    with pytest.raises(ValueError, match="not one of the model's classes"):
        sample_class(shared, "middle", 1, seed=0)


def test_unconditional_states_saved_before_the_diagonal_block_still_load():
    """Saved unconditional models have no ``sampling_diag_scale``: they load, fitted as they were."""
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[3], hidden=(16,))
    model = build_model(cfg)
    model.fit_sampling_distribution(x)
    state = model.state_dict()
    del state["sampling_diag_scale"]
    fresh = build_model(cfg)
    fresh.load_state_dict(state)
    assert fresh.sampling_fitted and fresh.sampling_scale_tril.shape == (3, 3)
    assert torch.equal(model.sample(2, torch.Generator().manual_seed(1)), fresh.sample(2, torch.Generator().manual_seed(1)))


def _imbalanced_trainer(class_balance: bool, seed: int = 0):
    """12 items, 10 of class 0 and 2 of class 1; item i's data is (i, i, i), so a drawn batch
    says which items it holds."""
    from models.training import Trainer

    model = build_model(ModelConfig(data_shape=(1, 3), arch="linear", latent_dims=[2], n_classes=2))
    x = torch.arange(12.0).repeat_interleave(3).reshape(12, 1, 3)
    y = torch.tensor([0] * 10 + [1] * 2)
    cfg = TrainConfig(batch_size=4, seed=seed, class_balance=class_balance, epochs=1)
    return Trainer(model, build_sampler(SamplerConfig(kind="none"), 2), x, cfg, labels=y)


def _drawn(trainer, epoch: int) -> tuple[list[int], list[int]]:
    items, labels = [], []
    for xb, yb in trainer._loader(epoch):
        items += xb[:, 0, 0].long().tolist()
        labels += yb.tolist()
    return items, labels


def test_class_balance_draws_the_minority_class_half_the_time():
    trainer = _imbalanced_trainer(class_balance=True)
    items, labels = [], []
    for epoch in range(50):
        i, y = _drawn(trainer, epoch)
        assert len(i) == 12  # an epoch is still len(data) items, in ceil(12 / 4) batches
        items += i
        labels += y
    assert labels == [int(i >= 10) for i in items]  # each item keeps its own label
    n = len(labels)
    share = sum(labels) / n
    sd = math.sqrt(0.25 / n)  # binomial, p = 1/2: 0.02 over 600 draws
    assert abs(share - 0.5) < 4 * sd, share
    # Both minority scans are drawn, about equally (each 1/4 of the draws).
    for item in (10, 11):
        assert abs(items.count(item) / n - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n), items.count(item)


def test_without_class_balance_an_epoch_is_a_permutation():
    trainer = _imbalanced_trainer(class_balance=False)
    labels = []
    for epoch in range(50):
        items, y = _drawn(trainer, epoch)
        assert sorted(items) == list(range(12))  # every item once: class 1 is 2 of 12
        labels += y
    assert sum(labels) / len(labels) == pytest.approx(2 / 12)


@pytest.mark.parametrize("class_balance", [True, False])
def test_minibatch_order_is_deterministic_per_seed_and_epoch(class_balance):
    a, b = _imbalanced_trainer(class_balance), _imbalanced_trainer(class_balance)
    assert _drawn(a, 3) == _drawn(b, 3) == _drawn(a, 3)
    assert _drawn(a, 3) != _drawn(a, 4)
    assert _drawn(a, 3) != _drawn(_imbalanced_trainer(class_balance, seed=1), 3)


def _offset_pair(arch: str):
    """A class-conditional model with a class offset and the same weights without one."""
    extra = {"latent_channels": (2,)} if arch == "hconv" else {}
    cfg = ModelConfig(data_shape=(1, 8, 8), arch=arch, latent_dims=[3], channels=(4, 8), n_classes=2, **extra)
    torch.manual_seed(0)
    with_offset = build_model(cfg)
    without = build_model(cfg.model_copy(update={"class_offset": False}))
    return with_offset, without


@pytest.mark.parametrize("arch", ["conv", "hconv"])
def test_class_offset_starts_at_each_class_mean_and_shifts_that_class_only(arch):
    """cfg.class_offset: the decoder's output for class c is a residual around the data mean plus
    a learned per-class term, started at class c's mean difference (the Trainer sets both)."""
    from models.training import Trainer

    model, without = _offset_pair(arch)
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.rand(5, 1, 8, 8, generator=g), 0.5 + torch.rand(3, 1, 8, 8, generator=g)])
    y = torch.tensor([0] * 5 + [1] * 3)
    Trainer(model, build_sampler(SamplerConfig(kind="none"), model.latent_dim), x,
            TrainConfig(pretrain_epochs=0, epochs=0), labels=y)
    torch.testing.assert_close(model.output_offset, x.mean(0))
    for c in (0, 1):
        torch.testing.assert_close(model.class_offset[c], x[y == c].mean(0) - x.mean(0))
    assert any(p is model.class_offset for p in model.generative_parameters())
    # the same weights without the class term: outputs differ by exactly that class's term
    without.load_state_dict(model.state_dict(), strict=False)
    u = torch.randn(4, model.latent_dim, generator=g)
    for c in (0, 1):
        torch.testing.assert_close(model.decode(u, y=c) - without.decode(u, y=c),
                                   model.class_offset[c].expand(4, 1, 8, 8), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["conv", "hconv"])
def test_a_state_saved_before_the_class_offset_loads_as_the_same_model(arch):
    model, without = _offset_pair(arch)
    with torch.no_grad():
        for p in without.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.load_state_dict(without.state_dict())  # no class_offset key: it starts at zero
    assert torch.count_nonzero(model.class_offset) == 0
    u = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model.decode(u, y=1), without.decode(u, y=1))
