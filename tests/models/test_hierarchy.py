"""``hconv``: the hierarchical VAE with spatial latent maps (issue 12, item 4)."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import load, save
from models.config import ModelConfig, SamplerConfig, TrainConfig
from models.factory import build_model
from models.hierarchy import SpatialHVAE
from models.samplers import build_sampler
from models.training import train

SHAPES = {2: (1, 16, 16), 3: (1, 8, 8, 8)}


def _model(spatial_dims=2, parameterization="noncentered", seed=0, **kwargs) -> SpatialHVAE:
    kwargs.setdefault("latent_channels", (2, 3))
    kwargs.setdefault("n_classes", 0)
    torch.manual_seed(seed)
    return build_model(ModelConfig(data_shape=SHAPES[spatial_dims], arch="hconv", latent_dims=[4],
                                   channels=(4, 8), hidden=(16,), parameterization=parameterization,
                                   likelihood="logistic", **kwargs))


def _x(model, batch, seed=0):
    return torch.rand(batch, *model.cfg.data_shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("maps", [(), (3,), (2, 3)])
@pytest.mark.parametrize("parameterization", ["noncentered", "centered"])
def test_layers_are_spatial_maps_at_coarse_resolutions(spatial_dims, maps, parameterization):
    model = _model(spatial_dims, parameterization, latent_channels=maps)
    side = SHAPES[spatial_dims][1]
    # bottleneck side/4; the map below it at twice that resolution; the vector on top
    expected = [c * (side // 4 * 2 ** (len(maps) - 1 - k)) ** spatial_dims for k, c in enumerate(maps)] + [4]
    assert model.latent_dims == expected and model.latent_dim == sum(expected)
    assert model.cfg.latent_dim == model.latent_dim
    x = _x(model, 3)
    u, log_q = model.rsample(x, n=2, generator=torch.Generator().manual_seed(1))
    assert u.shape == (6, model.latent_dim) and log_q.shape == (6,)
    torch.testing.assert_close(model.log_q(x, u), log_q, atol=1e-4, rtol=1e-5)
    assert model.log_joint(x, u).shape == (6,) and torch.isfinite(model.log_joint(x, u)).all()
    assert model.decode(u).shape == (6, *SHAPES[spatial_dims])
    assert model.sample(2).shape == (2, *SHAPES[spatial_dims])
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, model.latent_dim)


def test_centered_and_noncentered_agree_for_the_same_weights():
    centered, noncentered = _model(parameterization="centered"), _model(parameterization="noncentered")
    noncentered.load_state_dict(centered.state_dict())
    x = _x(centered, 4)
    eps = torch.randn(4, centered.latent_dim, generator=torch.Generator().manual_seed(2))
    z = noncentered.chain_to_latent(eps)
    torch.testing.assert_close(centered.decode(z), noncentered.decode(eps), atol=1e-5, rtol=1e-5)
    # the ELBO integrand log p(x, u) - log q(u | x) is the same in both chain spaces
    torch.testing.assert_close(centered.log_joint(x, z) - centered.log_q(x, z),
                               noncentered.log_joint(x, eps) - noncentered.log_q(x, eps), atol=1e-3, rtol=1e-5)
    # centered ancestral draws are the noncentered draws mapped through the prior
    a = centered.sample_prior(3, torch.Generator().manual_seed(4))
    b = noncentered.chain_to_latent(noncentered.sample_prior(3, torch.Generator().manual_seed(4)))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_every_layer_shapes_the_scan():
    """The decoder reads all layers: changing any one layer's chain coordinates changes the scan."""
    model = _model()
    u = torch.zeros(1, model.latent_dim)
    base = model.decode(u)
    start = 0
    for size in model.latent_dims:
        moved = u.clone()
        moved[:, start:start + size] = 2.0
        assert (model.decode(moved) - base).abs().max() > 1e-4
        start += size


def test_chains_move_every_layer_and_training_fits_the_sampling_distribution(tmp_path):
    model = _model(n_classes=2)
    x = _x(model, 12)
    y = torch.arange(12) % 2
    sampler = build_sampler(SamplerConfig(kind="mala", preconditioner="diag", n_steps=3), model.latent_dim)
    train(model, sampler, x, TrainConfig(pretrain_epochs=2, epochs=2, batch_size=6), labels=y)
    assert bool(model.sampling_is_fitted.all())
    # full covariance over the top vector only, diagonal over the maps
    assert model.sampling_scale_tril.shape == (2, 4, 4)
    assert model.sampling_diag_scale.shape == (2, model.latent_dim - 4)
    sampler.eval()
    u0, _ = model.rsample(x, generator=torch.Generator().manual_seed(0), y=y)
    u, _ = sampler.run(u0.detach(), lambda v: model.log_joint(x, v, y=y), n_steps=5,
                       generator=torch.Generator().manual_seed(1))
    for before, after in zip(model.split_layers(u0), model.split_layers(u)):
        assert (after - before).abs().mean() > 0
    loaded, _, _ = load(save(tmp_path / "h", model, sampler))
    assert isinstance(loaded, SpatialHVAE)
    a = model.sample(2, torch.Generator().manual_seed(3), y=1)
    assert torch.equal(a, loaded.sample(2, torch.Generator().manual_seed(3), y=1))


@pytest.mark.parametrize("kwargs,match", [
    ({"arch": "hconv", "latent_dims": [4, 2]}, "latent_dims: hconv takes one entry"),
    ({"arch": "hconv", "latent_channels": (2, 2, 2)}, "latent_channels: at most 2"),
    ({"arch": "conv", "latent_channels": (2,)}, "latent_channels: spatial latent maps need arch 'hconv'"),
])
def test_bad_hconv_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(data_shape=(1, 16, 16), channels=(4, 8), **kwargs)


@pytest.mark.parametrize("parameterization", ["noncentered", "centered"])
def test_maps_are_drawn_from_their_prior_at_the_configured_temperature(parameterization):
    """map_sampling "prior": maps follow p(z_k | h) given the top vector, scaled by the
    temperature; at temperature 0 each map is its prior mean, so the top vector alone sets the scan."""
    model = _model(parameterization=parameterization)
    cold = model.cfg.model_copy(update={"map_sampling": "prior", "map_temperature": 0.0})
    model.cfg = cold
    u = model.sample_latent(3, torch.Generator().manual_seed(0))
    top = model.split_layers(u)[-1]
    # the same top vector with the maps at their prior means, built independently
    def given_top(layer, loc, log_std):  # noncentered: the prior's loc is the scalar 0
        return top if layer == len(model.latent_dims) - 1 else torch.as_tensor(loc).expand(3, model.latent_dims[layer])

    expected = torch.cat(model._descend(given_top, None, None)[0], dim=-1)
    torch.testing.assert_close(u, expected)
    if parameterization == "noncentered":
        assert torch.count_nonzero(u[:, :-4]) == 0
    model.cfg = cold.model_copy(update={"map_temperature": 1.0})
    warm = model.sample_latent(3, torch.Generator().manual_seed(0))
    assert not torch.allclose(warm[:, :-4], u[:, :-4])


@pytest.mark.parametrize("arch", ["hconv", "conv"])
def test_phase_two_scores_noncentered_chains_by_the_centered_density_of_their_latents(arch):
    """The decoder's phase-2 objective at a noncentered hierarchy's chain end points is
    log p_theta(x, z) at their latents z (fixed): it gives the prior's own parameters a gradient,
    which log p(x, eps) at fixed eps does not (the cause of phase 2's divergence)."""
    from models.training import Trainer

    if arch == "hconv":
        noncentered, centered = _model(parameterization="noncentered"), _model(parameterization="centered")
    else:
        cfg = dict(data_shape=SHAPES[2], arch="conv", latent_dims=[6, 3], channels=(4, 8), hidden=(16,),
                   likelihood="logistic")
        torch.manual_seed(0)
        noncentered = build_model(ModelConfig(parameterization="noncentered", **cfg))
        centered = build_model(ModelConfig(parameterization="centered", **cfg))
    x = _x(noncentered, 3)
    trainer = Trainer(noncentered, build_sampler(SamplerConfig(kind="mala"), noncentered.latent_dim), x,
                      TrainConfig(batch_size=3))
    centered.load_state_dict(noncentered.state_dict())  # after the trainer's data-based initialisation
    eps = torch.randn(3, noncentered.latent_dim, generator=torch.Generator().manual_seed(5))
    objective = trainer._decoder_log_joint(x, eps)
    z = noncentered.chain_to_latent(eps).detach()
    torch.testing.assert_close(objective, centered.log_joint(x, z), atol=1e-3, rtol=1e-5)
    assert noncentered.cfg.parameterization == "noncentered"  # restored
    # It differs from log p(x, eps) by the log-Jacobian of z(eps), whose gradient reaches the
    # prior's scale networks; log p(x, eps) at fixed eps gives them none through the prior.
    assert not torch.allclose(objective, noncentered.log_joint(x, eps), atol=1e-2)
    prior_params = [p for name, p in noncentered.named_parameters() if "prior" in name and p.requires_grad]
    assert prior_params
    grads = torch.autograd.grad(objective.sum(), prior_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_single_layer_noncentered_models_keep_their_phase_two_objective():
    from models.training import Trainer

    torch.manual_seed(0)
    model = build_model(ModelConfig(data_shape=SHAPES[2], arch="conv", latent_dims=[4], channels=(4, 8)))
    x = _x(model, 2)
    trainer = Trainer(model, build_sampler(SamplerConfig(kind="mala"), model.latent_dim), x, TrainConfig(batch_size=2))
    u = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(trainer._decoder_log_joint(x, u), model.log_joint(x, u))


def test_joint_sampling_matches_the_aggregate_posterior_moments():
    """map_sampling "joint": draws have the aggregate posterior's mean and the covariance of the
    law of total covariance, E[Var(u | x)] (diagonal) + Cov(E[u | x]), over every layer at once,
    so maps keep the correlation the scans' posterior means share. Tolerances: 4 standard errors
    of a mean / covariance entry from 40000 draws."""
    model = _model(latent_channels=(1,), sampling="aggregate", map_sampling="joint")  # 16 + 4 coordinates
    model.eval()
    x = _x(model, 5, seed=3)
    assert model.fit_sampling_distribution(x)
    mu, logvar = (t.double() for t in model.encode(x))
    centered = mu - mu.mean(0)
    expected_cov = torch.diag(logvar.exp().mean(0)) + centered.T @ centered / len(mu)
    factor, within = model.sampling_factor.double(), model.sampling_within_scale.double()
    torch.testing.assert_close(factor.T @ factor + torch.diag(within**2), expected_cov, atol=1e-5, rtol=1e-4)
    n = 40000
    u = model.sample_latent(n, torch.Generator().manual_seed(0)).double()
    sd = expected_cov.diagonal().sqrt()
    assert ((u.mean(0) - mu.mean(0)).abs() < 4 * sd / n**0.5).all()
    empirical = torch.cov(u.T)
    # sd of a sample covariance entry: sqrt((s_ii s_jj + s_ij^2) / n)
    tolerance = 4 * ((torch.outer(sd**2, sd**2) + expected_cov**2) / n).sqrt()
    assert ((empirical - expected_cov).abs() < tolerance).all()
    # the between-scan part is low rank (5 scans: rank 4) and carries real correlation
    assert torch.linalg.matrix_rank(factor, atol=1e-6) == 4


def test_joint_sampling_keeps_the_leading_directions_and_round_trips(tmp_path):
    model = _model(latent_channels=(1,), sampling="aggregate", map_sampling="joint", sampling_rank=1)
    model.eval()
    x = _x(model, 6, seed=4)
    assert model.fit_sampling_distribution(x)
    mu = model.encode(x)[0].double()
    centered = (mu - mu.mean(0)) / len(mu) ** 0.5
    top = torch.linalg.svd(centered, full_matrices=False)
    # rank 1 keeps the first principal direction of the posterior means, at its spread
    torch.testing.assert_close(model.sampling_factor[0].double().abs(),
                               (top.S[0] * top.Vh[0]).abs(), atol=1e-5, rtol=1e-4)
    loaded, _, _ = load(save(tmp_path / "h", model, build_sampler(SamplerConfig(kind="none"), model.latent_dim)))
    a = model.sample(2, torch.Generator().manual_seed(1))
    assert torch.equal(a, loaded.sample(2, torch.Generator().manual_seed(1)))


def test_joint_sampling_is_per_class_and_a_class_without_scans_keeps_its_prior():
    model = _model(latent_channels=(1,), sampling="aggregate", map_sampling="joint", n_classes=3)
    model.eval()
    x = torch.cat([_x(model, 4, seed=5), _x(model, 4, seed=6) * 0.2])
    y = torch.tensor([0] * 4 + [1] * 4)
    with pytest.warns(RuntimeWarning, match="class 2"):
        assert not model.fit_sampling_distribution([(x, y)])
    assert model.sampling_is_fitted.tolist() == [True, True, False]
    for c, rows in ((0, slice(0, 4)), (1, slice(4, 8))):
        torch.testing.assert_close(model.sampling_loc[c], model.encode(x[rows], c)[0].mean(0), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(model.sampling_loc[0], model.sampling_loc[1])
    # class 2 draws from its prior: identical to sample_prior with the same generator
    torch.testing.assert_close(model.sample_latent(3, torch.Generator().manual_seed(2), y=2),
                               model.sample_prior(3, torch.Generator().manual_seed(2), y=2))
    with pytest.raises(ValueError, match="y"):
        model.sample_latent(2, torch.Generator().manual_seed(2))
