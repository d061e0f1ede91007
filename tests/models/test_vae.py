import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from models.config import ModelConfig
from models.factory import build_model
from models.networks import build_decoder, build_encoder
from models.vae import VAE

SHAPE_2D = (1, 8, 8)
SHAPE_3D = (1, 8, 8, 8)
LATENTS = {1: [4], 2: [4, 3], 3: [5, 3, 2], 4: [4, 3, 3, 2]}
PARAMS = ["centered", "noncentered"]


def _model(seed=0, **kwargs) -> VAE:
    kwargs.setdefault("data_shape", SHAPE_2D)
    kwargs.setdefault("channels", (4, 8))
    kwargs.setdefault("hidden", (16,))
    torch.manual_seed(seed)
    return build_model(ModelConfig(**kwargs))


def _x(model: VAE, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *model.cfg.data_shape, generator=g)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("parameterization", PARAMS)
@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "arch,shape", [("linear", SHAPE_2D), ("mlp", SHAPE_2D), ("conv", SHAPE_2D), ("conv", SHAPE_3D)]
)
def test_shapes(arch, shape, n_layers, parameterization):
    model = _model(
        arch=arch,
        data_shape=shape,
        latent_dims=LATENTS[n_layers],
        parameterization=parameterization,
    )
    d, batch, n = sum(LATENTS[n_layers]), 3, 2
    assert model.latent_dim == d and model.latent_dims == LATENTS[n_layers]
    x = _x(model, batch)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (batch, d)
    u, log_q = model.rsample(x)
    assert u.shape == (batch, d) and log_q.shape == (batch,)
    u, log_q = model.rsample(x, n=n)
    assert u.shape == (n * batch, d) and log_q.shape == (n * batch,)
    assert model.log_q(x, u).shape == (n * batch,)
    assert model.log_prior(u).shape == (n * batch,)
    assert model.log_joint(x, u).shape == (n * batch,)
    assert model.log_likelihood_given(x[:1], u[:1]).shape == (1,)
    assert model.decode(u).shape == (n * batch, *shape)
    assert model.sample(2).shape == (2, *shape)
    assert torch.isfinite(model.log_joint(x, u)).all() and torch.isfinite(log_q).all()


@pytest.mark.parametrize("shape", [SHAPE_2D, SHAPE_3D, (2, 16, 8)])
def test_conv_networks_round_trip_shapes_and_have_no_batch_norm(shape):
    cfg = ModelConfig(data_shape=shape, arch="conv", channels=(4, 8))
    encoder, features = build_encoder(cfg)
    decoder = build_decoder(cfg, 5)
    x = torch.rand(2, *shape)
    assert encoder(x).shape == (2, features)
    assert decoder(torch.randn(2, 5)).shape == (2, *shape)
    norms = (torch.nn.modules.batchnorm._BatchNorm,)
    assert not any(isinstance(m, norms) for m in [*encoder.modules(), *decoder.modules()])


# -------------------------------------------------------- chain space maps
@pytest.mark.parametrize("n_layers", [1, 3])
def test_noncentered_prior_is_standard_normal(n_layers):
    model = _model(arch="mlp", latent_dims=LATENTS[n_layers], parameterization="noncentered")
    u = torch.randn(6, model.latent_dim) * 2
    expected = Normal(0.0, 1.0).log_prob(u).sum(-1)
    torch.testing.assert_close(model.log_prior(u), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_centered_and_noncentered_agree_for_the_same_weights(arch):
    dims = LATENTS[3]
    centered = _model(
        arch=arch, latent_dims=dims, parameterization="centered", likelihood="logistic"
    )
    noncentered = _model(
        arch=arch, latent_dims=dims, parameterization="noncentered", likelihood="logistic"
    )
    noncentered.load_state_dict(centered.state_dict())
    x = _x(centered, 4)
    eps = torch.randn(4, centered.latent_dim, generator=torch.Generator().manual_seed(1))
    z = noncentered.chain_to_latent(eps)
    torch.testing.assert_close(noncentered.latent_to_chain(z), eps, atol=1e-5, rtol=1e-5)
    # z_L = eps_L: the top layer is shared by both parameterisations
    torch.testing.assert_close(z[:, -dims[-1] :], eps[:, -dims[-1] :])

    torch.testing.assert_close(
        centered.log_likelihood_given(x, z), noncentered.log_likelihood_given(x, eps)
    )
    torch.testing.assert_close(centered.decode(z), noncentered.decode(eps))

    # densities differ by the Jacobian of eps -> z: log |dz/deps| = sum of log sigma_l, l < L
    zs = centered.split_layers(z)
    log_jacobian = sum(centered._prior(l, zs[l + 1])[1].sum(-1) for l in range(len(dims) - 1))
    torch.testing.assert_close(centered.log_prior(z), noncentered.log_prior(eps) - log_jacobian)
    torch.testing.assert_close(centered.log_q(x, z), noncentered.log_q(x, eps) - log_jacobian)
    # ... so the ELBO integrand log p(x, u) - log q(u | x) is the same in both spaces
    torch.testing.assert_close(
        centered.log_joint(x, z) - centered.log_q(x, z),
        noncentered.log_joint(x, eps) - noncentered.log_q(x, eps),
    )


def test_centered_rsample_maps_to_noncentered_rsample():
    dims = LATENTS[2]
    centered = _model(arch="mlp", latent_dims=dims, parameterization="centered")
    noncentered = _model(arch="mlp", latent_dims=dims, parameterization="noncentered")
    noncentered.load_state_dict(centered.state_dict())
    x = _x(centered, 3)
    z, _ = centered.rsample(x, n=2, generator=torch.Generator().manual_seed(5))
    eps, _ = noncentered.rsample(x, n=2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(noncentered.chain_to_latent(eps), z, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- q and rsample
@pytest.mark.parametrize("parameterization", PARAMS)
@pytest.mark.parametrize("n_layers", [1, 2, 4])
def test_rsample_log_q_matches_log_q(n_layers, parameterization):
    model = _model(arch="mlp", latent_dims=LATENTS[n_layers], parameterization=parameterization)
    x = _x(model, 3)
    u, log_q = model.rsample(x, n=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.log_q(x, u), log_q, atol=1e-4, rtol=1e-5)
    # sample-major: row s * B + b is item b, whatever s
    rows = u.view(4, 3, -1)
    for b in range(3):
        torch.testing.assert_close(
            model.log_q(x[b : b + 1], rows[:, b]), log_q.view(4, 3)[:, b], atol=1e-4, rtol=1e-5
        )


@pytest.mark.parametrize("arch", ["linear", "mlp", "conv"])
def test_one_layer_q_is_the_encoded_gaussian(arch):
    model = _model(arch=arch, latent_dims=[4])
    x = _x(model, 3)
    mu, logvar = model.encode(x)
    u, log_q = model.rsample(x, n=5)
    expected = Normal(mu.repeat(5, 1), torch.exp(0.5 * logvar).repeat(5, 1)).log_prob(u).sum(-1)
    torch.testing.assert_close(log_q, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("parameterization", PARAMS)
def test_hierarchical_encode_top_layer_is_exact(parameterization):
    # q(z_L | x) is Gaussian even in a hierarchy: the draws' top layer has encode()'s moments.
    model = _model(arch="mlp", latent_dims=[3, 2], parameterization=parameterization)
    x = _x(model, 1)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        u, _ = model.rsample(x, n=4000, generator=torch.Generator().manual_seed(0))
    top = u[:, -2:]
    std = torch.exp(0.5 * logvar[0, -2:])
    torch.testing.assert_close(
        top.mean(0), mu[0, -2:], atol=float(5 * std.max() / math.sqrt(4000)), rtol=0
    )
    torch.testing.assert_close(top.std(0), std, atol=0, rtol=0.1)


def test_rsample_is_reparameterised():
    model = _model(arch="mlp", latent_dims=LATENTS[2])
    u, log_q = model.rsample(_x(model, 2))
    grads = torch.autograd.grad(
        (u.sum() + log_q.sum()), model.encoder_parameters(), allow_unused=True
    )
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------ batch coupling
@pytest.mark.parametrize("parameterization", PARAMS)
@pytest.mark.parametrize("shape", [SHAPE_2D, SHAPE_3D])
def test_no_batch_coupling_and_finite_gradients(shape, parameterization):
    model = _model(
        arch="conv", data_shape=shape, latent_dims=[4, 2], parameterization=parameterization
    )
    x = _x(model, 4)
    u = torch.randn(4, model.latent_dim, requires_grad=True)
    log_joint = model.log_joint(x, u)
    (grad,) = torch.autograd.grad(log_joint[0], u)
    assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0
    assert torch.all(grad[1:] == 0)  # item 0's target does not see items 1..3

    x2, u2 = x.clone(), u.detach().clone()
    x2[1:] = torch.rand_like(x2[1:])
    u2[1:] = torch.randn_like(u2[1:]) * 3
    torch.testing.assert_close(model.log_joint(x2, u2)[0], log_joint[0], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(model.log_q(x2, u2)[0], model.log_q(x, u)[0], atol=1e-5, rtol=1e-6)
    (full_grad,) = torch.autograd.grad(model.log_joint(x, u).sum(), u)
    assert torch.isfinite(full_grad).all()


def test_log_joint_does_not_depend_on_the_encoder():
    model = _model(arch="mlp", latent_dims=LATENTS[3], parameterization="centered")
    x = _x(model, 2)
    u = torch.randn(2, model.latent_dim)
    model.log_joint(x, u).sum().backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert all(p.grad is not None for p in model.generative_parameters())


# ------------------------------------------------- linear model = probabilistic PCA
def _ppca(obs_log_var=-1.0):
    model = _model(
        seed=3, arch="linear", data_shape=(1, 3, 2), latent_dims=[2], obs_log_var=obs_log_var
    ).double()
    W = model.decoder[0].weight.detach()  # (D, d)
    b = model.decoder[0].bias.detach()
    return model, W, b, math.exp(obs_log_var)


def test_linear_model_is_affine_in_x_and_z():
    model, W, b, _ = _ppca()
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 2, generator=g, dtype=torch.float64)
    for a in (-1.5, 0.3, 2.0):
        mixed = model.decode((a * z1 + (1 - a) * z2)[None])
        torch.testing.assert_close(
            mixed, a * model.decode(z1[None]) + (1 - a) * model.decode(z2[None])
        )
    torch.testing.assert_close(model.decode(z1[None]).flatten(), W @ z1 + b)

    x1, x2 = torch.rand(2, 1, 1, 3, 2, generator=g, dtype=torch.float64) * 0.1
    for a in (-1.0, 0.5, 3.0):
        mu_mix, logvar_mix = model.encode(a * x1 + (1 - a) * x2)
        mu1, mu2 = model.encode(x1)[0], model.encode(x2)[0]
        torch.testing.assert_close(mu_mix, a * mu1 + (1 - a) * mu2)
        # log-variances pass through the soft bound (identity at 0, tanh-saturating), so they
        # are affine in x only to first order near 0; PPCA's constant posterior variance is
        # still representable exactly.
        assert torch.isfinite(logvar_mix).all()


def test_linear_model_log_joint_is_linear_gaussian():
    model, W, b, sigma2 = _ppca()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 3, 2, generator=g, dtype=torch.float64)
    z = torch.randn(5, 2, generator=g, dtype=torch.float64)
    D = W.shape[0]
    expected = MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    ).log_prob(z)
    expected = expected + MultivariateNormal(
        z @ W.T + b, sigma2 * torch.eye(D, dtype=torch.float64)
    ).log_prob(x.flatten(1))
    torch.testing.assert_close(model.log_joint(x, z), expected)


def test_linear_model_marginal_covariance_is_w_wt_plus_sigma2():
    model, W, b, sigma2 = _ppca()
    n = 20000
    g = torch.Generator().manual_seed(7)
    means = model.sample(n, generator=g).flatten(1)
    x = means + math.sqrt(sigma2) * torch.randn(means.shape, generator=g, dtype=torch.float64)
    D = W.shape[0]
    cov = W @ W.T + sigma2 * torch.eye(D, dtype=torch.float64)
    sample_cov = torch.cov(x.T)
    # standard error of a Gaussian sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    std_err = torch.sqrt((torch.outer(cov.diagonal(), cov.diagonal()) + cov**2) / n)
    assert torch.all((sample_cov - cov).abs() < 5 * std_err), (sample_cov - cov) / std_err
    assert torch.all((x.mean(0) - b).abs() < 5 * torch.sqrt(cov.diagonal() / n))


# ------------------------------------------------------------- sampling, params
@pytest.mark.parametrize("parameterization", PARAMS)
def test_sample_and_rsample_are_reproducible_with_a_generator(parameterization):
    model = _model(
        arch="mlp",
        latent_dims=LATENTS[2],
        parameterization=parameterization,
        likelihood="bernoulli",
    )
    a = model.sample(3, generator=torch.Generator().manual_seed(11))
    b = model.sample(3, generator=torch.Generator().manual_seed(11))
    c = model.sample(3, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    x = _x(model, 2)
    u1, q1 = model.rsample(x, n=2, generator=torch.Generator().manual_seed(3))
    u2, q2 = model.rsample(x, n=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(u1, u2) and torch.equal(q1, q2)


def test_centered_prior_samples_follow_the_hierarchy():
    # ancestral draws in z: the top layer is N(0, I) and the layer below has the prior's
    # conditional moments (checked by its standardised residuals)
    model = _model(arch="mlp", latent_dims=[2, 2], parameterization="centered")
    z = model.sample_prior(4000, generator=torch.Generator().manual_seed(0))
    bottom, top = model.split_layers(z)
    mu, log_sigma = model._prior(0, top)
    resid = ((bottom - mu) * torch.exp(-log_sigma)).detach()
    for t in (top, resid):
        assert t.mean(0).abs().max() < 0.1 and (t.std(0) - 1).abs().max() < 0.06


@pytest.mark.parametrize(
    "arch,n_layers,likelihood",
    [("linear", 1, "gaussian"), ("conv", 3, "logistic"), ("mlp", 2, "bernoulli")],
)
def test_parameter_split_is_disjoint_and_complete(arch, n_layers, likelihood):
    model = _model(arch=arch, latent_dims=LATENTS[n_layers], likelihood=likelihood)
    phi = {id(p) for p in model.encoder_parameters()}
    theta = {id(p) for p in model.generative_parameters()}
    everything = {id(p) for p in model.parameters()}
    assert phi and theta and not phi & theta
    assert phi | theta == everything
    assert len(model.encoder_parameters()) == len(phi)  # no duplicates either
    if likelihood != "bernoulli":
        assert id(next(model.likelihood.parameters())) in theta


def test_frozen_observation_variance_is_not_a_parameter():
    model = _model(arch="mlp", likelihood="gaussian", learn_obs_var=False, obs_log_var=-2.0)
    assert all(p is not model.likelihood.log_var for p in model.parameters())
    assert "likelihood.log_var" in model.state_dict()


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("arch", ["linear", "conv"])
def test_wrong_shapes_raise_value_error_naming_the_field(arch):
    model = _model(arch=arch, latent_dims=[3, 2])
    x, bad_x = _x(model, 2), torch.rand(2, 1, 8, 4)
    u, bad_u = torch.randn(2, 5), torch.randn(2, 4)
    for call in (
        lambda: model.log_joint(bad_x, u),
        lambda: model.encode(bad_x),
        lambda: model.rsample(bad_x),
        lambda: model.log_q(bad_x, u),
        lambda: model.encode(x[0]),  # missing batch dimension
    ):
        with pytest.raises(ValueError, match="data_shape"):
            call()
    for call in (
        lambda: model.log_joint(x, bad_u),
        lambda: model.log_prior(bad_u),
        lambda: model.log_q(x, bad_u),
        lambda: model.decode(bad_u),
        lambda: model.log_joint(x, u[0]),
    ):
        with pytest.raises(ValueError, match="latent_dim"):
            call()
    with pytest.raises(ValueError, match="multiple"):
        model.log_q(x, torch.randn(3, 5))


# ------------------------------------------------------------- aggregate-posterior sampling
@pytest.mark.parametrize("parameterization", PARAMS)
def test_sampling_distribution_matches_the_aggregate_posterior_moments(parameterization):
    # One latent layer: q(u | x_i) = N(mu_i, diag s_i^2) exactly, so the aggregate posterior has
    # mean m = mean_i mu_i and covariance mean_i (diag s_i^2 + mu_i mu_i^T) - m m^T: fitted exactly.
    model = _model(arch="mlp", latent_dims=[3], parameterization=parameterization)
    x = _x(model, 5)
    with torch.no_grad():
        mu, logvar = model.encode(x)
    mu, var = mu.double(), logvar.double().exp()
    m = mu.mean(0)
    cov = torch.diag(var.mean(0)) + (mu.T @ mu) / len(mu) - torch.outer(m, m)
    assert model.fit_sampling_distribution([x[:2], x[2:]])  # in batches, as Trainer passes them
    tril = model.sampling_scale_tril.double()
    assert model.sampling_fitted
    torch.testing.assert_close(model.sampling_loc.double(), m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tril @ tril.T, cov, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("parameterization", PARAMS)
def test_hierarchical_sampling_distribution_matches_draws_of_the_aggregate_posterior(parameterization):
    # Several layers: q is not Gaussian; the fit uses max(16, 4 d) draws per scan. Compare with
    # the moments of many independent draws, within 5 standard errors of the fit's own draws.
    model = _model(arch="mlp", latent_dims=[3, 2], parameterization=parameterization)
    x = _x(model, 4)
    reference, _ = model.rsample(x, n=20000, generator=torch.Generator().manual_seed(1))
    reference = reference.detach().double()
    m, cov = reference.mean(0), torch.cov(reference.T)
    assert model.fit_sampling_distribution(x, generator=torch.Generator().manual_seed(2))
    n = 4 * max(16, 4 * model.latent_dim)
    assert torch.all((model.sampling_loc.double() - m).abs() < 5 * torch.sqrt(cov.diagonal() / n))
    tril = model.sampling_scale_tril.double()
    std_err = torch.sqrt((torch.outer(cov.diagonal(), cov.diagonal()) + cov**2) / n)
    assert torch.all((tril @ tril.T - cov).abs() < 5 * std_err + 1e-5)


def test_one_scan_gives_a_full_rank_sampling_distribution():
    # A class of one scan still varies in every latent direction, by its posterior's own width.
    model = _model(arch="mlp", latent_dims=[16])
    x = _x(model, 1)
    assert model.fit_sampling_distribution(x)
    tril = model.sampling_scale_tril.double()
    with torch.no_grad():
        _, logvar = model.encode(x)
    eigenvalues = torch.linalg.eigvalsh(tril @ tril.T)
    assert eigenvalues.min() >= 0.99 * float(logvar.exp().min())


def test_states_saved_before_the_sampling_distribution_still_load():
    model = _model(arch="mlp", latent_dims=[3])
    model.fit_sampling_distribution(_x(model, 4))
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("sampling_")}
    fresh = _model(arch="mlp", latent_dims=[3], seed=1)
    fresh.load_state_dict(old)  # strict, yet the missing buffers are filled in: unfitted
    assert not fresh.sampling_fitted
    assert torch.equal(fresh.sample_latent(2, torch.Generator().manual_seed(0)),
                       fresh.sample_prior(2, torch.Generator().manual_seed(0)))


def test_aggregate_sampling_draws_from_the_fitted_gaussian_and_prior_sampling_ignores_it():
    model = _model(arch="mlp", latent_dims=[2])
    with torch.no_grad():
        model.sampling_loc.copy_(torch.tensor([6.0, -4.0]))
        model.sampling_scale_tril.copy_(torch.tensor([[0.5, 0.0], [0.3, 0.2]]))
        model.sampling_is_fitted.fill_(True)
    n = 20000
    u = model.sample_latent(n, generator=torch.Generator().manual_seed(1)).double()
    cov = torch.tensor([[0.25, 0.15], [0.15, 0.13]], dtype=torch.float64)
    assert torch.all((u.mean(0) - torch.tensor([6.0, -4.0], dtype=torch.float64)).abs()
                     < 5 * torch.sqrt(cov.diagonal() / n))
    std_err = torch.sqrt((torch.outer(cov.diagonal(), cov.diagonal()) + cov**2) / n)
    assert torch.all((torch.cov(u.T) - cov).abs() < 5 * std_err)
    # the same weights with sampling="prior": N(0, I) draws
    prior = VAE(model.cfg.model_copy(update={"sampling": "prior"}))
    prior.load_state_dict(model.state_dict())
    v = prior.sample_latent(n, generator=torch.Generator().manual_seed(1))
    assert v.mean(0).abs().max() < 5 / math.sqrt(n) and (v.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n)
    assert torch.equal(prior.sample(2, generator=torch.Generator().manual_seed(2)),
                       prior.decode(prior.sample_prior(2, generator=torch.Generator().manual_seed(2))))


def test_an_unfitted_model_samples_from_its_prior():
    model = _model(arch="mlp", latent_dims=[3])
    assert model.cfg.sampling == "aggregate" and not model.sampling_fitted
    a = model.sample_latent(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, model.sample_prior(4, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="no scans"):
        model.fit_sampling_distribution([])
