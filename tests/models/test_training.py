"""Training, likelihood estimation and checkpoints, against closed forms and real data."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits

from models import (
    ModelConfig,
    SamplerConfig,
    TrainConfig,
    Trainer,
    build_model,
    build_sampler,
    load,
    log_likelihood,
    save,
    train,
)


def _ppca_closed_form(model, x: torch.Tensor) -> torch.Tensor:
    """log N(x; b, W W^T + sigma^2 I) for a linear-Gaussian model, read off the model."""
    d = model.latent_dim
    with torch.no_grad():
        bias = model.decode(torch.zeros(1, d)).flatten()
        weight = (model.decode(torch.eye(d)).flatten(1) - bias).T  # (D, d)
    variance = math.exp(model.cfg.obs_log_var)
    cov = weight @ weight.T + variance * torch.eye(weight.shape[0])
    dist = torch.distributions.MultivariateNormal(bias, covariance_matrix=cov)
    return dist.log_prob(x.flatten(1))


def test_log_likelihood_matches_probabilistic_pca_closed_form():
    torch.manual_seed(0)
    cfg = ModelConfig(data_shape=(1, 6), arch="linear", latent_dims=[2], likelihood="gaussian",
                      obs_log_var=math.log(0.1), learn_obs_var=False)
    model = build_model(cfg)
    for p in model.generative_parameters():  # a fixed generative model: only the encoder learns
        p.requires_grad_(False)
    with torch.no_grad():
        x = model.sample(600, generator=torch.Generator().manual_seed(1))
        x = x + 0.1**0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    sampler = build_sampler(SamplerConfig(kind="none"), model.latent_dim)
    train(model, sampler, x[:500], TrainConfig(pretrain_epochs=150, epochs=0, batch_size=100, lr=1e-2))
    held_out = x[500:]
    estimate = log_likelihood(model, held_out, n_particles=1000, generator=torch.Generator().manual_seed(3))
    exact = _ppca_closed_form(model, held_out)
    assert (estimate - exact).abs().max() < 0.5, (estimate - exact).abs().max()
    # and the estimator is not trivially loose: the ELBO-only bound would be visibly worse
    # if the encoder had not been trained (checked by the fact that we compare to exact).


@pytest.fixture(scope="module")
def digits():
    images, _ = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0 > 0.5, dtype=torch.float32).view(-1, 1, 8, 8)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order[:1400]], x[order[1400:]]


def _digits_model(latent_dims, seed):
    torch.manual_seed(seed)
    cfg = ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=latent_dims,
                      likelihood="bernoulli", hidden=(128,))
    return build_model(cfg)


def _held_out(model, x):
    return float(log_likelihood(model, x, n_particles=500, generator=torch.Generator().manual_seed(1)).mean())


@pytest.mark.slow
def test_mcmc_phase_raises_held_out_likelihood_on_digits(digits):
    train_x, test_x = digits
    budget = dict(batch_size=64, lr=1e-3, seed=0)

    pre = _digits_model([8], seed=0)
    train(pre, build_sampler(SamplerConfig(kind="none"), 8), train_x, TrainConfig(pretrain_epochs=20, epochs=0, **budget))
    plain = _digits_model([8], seed=0)
    train(plain, build_sampler(SamplerConfig(kind="none"), 8), train_x, TrainConfig(pretrain_epochs=40, epochs=0, **budget))
    refined = _digits_model([8], seed=0)
    sampler = build_sampler(SamplerConfig(kind="mala", adaptation="entropy", n_steps=5), 8)
    history = train(refined, sampler, train_x, TrainConfig(pretrain_epochs=20, epochs=20, **budget))

    ll_pre, ll_plain, ll_mcmc = _held_out(pre, test_x), _held_out(plain, test_x), _held_out(refined, test_x)
    # Seen on the 2-core CI machine: about -22.2, -20.3 and -19.4 nats.
    assert ll_mcmc > ll_pre + 1.0, (ll_pre, ll_mcmc)
    assert ll_mcmc > ll_plain + 0.3, (ll_plain, ll_mcmc)
    phase2 = [r for r in history.records if r.phase == 2]
    assert len(phase2) == 20
    # beta's rule steers acceptance towards MALA's 0.574 by the end of training
    assert 0.45 < phase2[-1].accept < 0.75, phase2[-1].accept


def _tiny_run(cfg: ModelConfig, sampler_cfg: SamplerConfig, n: int = 24):
    torch.manual_seed(0)
    model = build_model(cfg)
    sampler = build_sampler(sampler_cfg, model.latent_dim)
    x = torch.rand(n, *cfg.data_shape)
    before = [p.detach().clone() for p in model.parameters()]
    history = train(model, sampler, x, TrainConfig(pretrain_epochs=1, epochs=2, batch_size=8))
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return model, sampler, history, changed


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[4], hidden=(32,)),
        ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[6, 3], hidden=(32,)),
        ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[8, 4, 2], hidden=(32,),
                    parameterization="centered"),
        ModelConfig(data_shape=(1, 8, 8), arch="conv", latent_dims=[4, 2], channels=(4, 8),
                    likelihood="logistic"),
        ModelConfig(data_shape=(1, 8, 8, 8), arch="conv", latent_dims=[4], channels=(4, 8),
                    likelihood="bernoulli"),
    ],
    ids=["plain", "hier2", "hier3-centered", "conv2d-hier2", "conv3d"],
)
@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_training_runs_end_to_end(cfg, kind):
    sampler_cfg = SamplerConfig(kind=kind, preconditioner="lowrank" if len(cfg.latent_dims) > 1 else "diag",
                                n_steps=2, n_leapfrog=2)
    model, sampler, history, changed = _tiny_run(cfg, sampler_cfg)
    assert [r.phase for r in history.records] == [1, 2, 2]
    assert all(math.isfinite(r.elbo) for r in history.records)
    assert all(0.0 <= r.accept <= 1.0 for r in history.records if r.phase == 2)
    assert history.records[-1].progress == pytest.approx(1.0)
    assert changed == len(list(model.parameters())), "every parameter should have been updated"
    assert not model.training and not sampler.training
    scans = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert scans.shape == (2, *cfg.data_shape) and torch.isfinite(scans).all()


def test_resumed_training_equals_uninterrupted_training():
    cfg = ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[4, 2], hidden=(32,))
    scfg = SamplerConfig(kind="mala", preconditioner="full", n_steps=2)
    tcfg = TrainConfig(pretrain_epochs=1, epochs=2, batch_size=8, seed=3)
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg)
        return Trainer(model, build_sampler(scfg, model.latent_dim), x, tcfg)

    whole = fresh()
    whole.fit()
    checkpoints = []
    first = fresh()
    first.fit(checkpoint_every=4, on_checkpoint=checkpoints.append)
    resumed = fresh()
    resumed.load_state_dict(checkpoints[1])  # step 8: mid-way through phase 2's first epoch
    assert resumed.global_step == 8
    resumed.fit()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.allclose(whole.sampler.beta, resumed.sampler.beta)
    assert [r.epoch for r in resumed.history.records] == [1, 2, 3]


def test_saved_model_gives_the_same_scans(tmp_path):
    cfg = ModelConfig(data_shape=(1, 8, 8), arch="conv", latent_dims=[4, 2], channels=(4, 8))
    model, sampler, _, _ = _tiny_run(cfg, SamplerConfig(kind="mala", preconditioner="full", n_steps=2))
    path = save(tmp_path / "m", model, sampler, {"class": "AD"})
    loaded, loaded_sampler, meta = load(path)
    assert meta == {"class": "AD"}
    a = model.sample(3, generator=torch.Generator().manual_seed(7))
    b = loaded.sample(3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.allclose(sampler.proposal_covariance(), loaded_sampler.proposal_covariance())
    assert float(loaded_sampler.beta) == float(sampler.beta)


def test_load_rejects_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="not a saved mcvae model"):
        load(tmp_path)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(data_shape=(1, 8, 8), latent_dims=[]), "latent_dims"),
        (dict(data_shape=(1, 8, 8), arch="transformer"), "arch"),
        (dict(data_shape=(1, 8, 8), likelihood="poisson"), "likelihood"),
        (dict(data_shape=(1, 8, 8), parameterization="sideways"), "parameterization"),
        (dict(data_shape=(1, 0, 8), arch="conv", channels=(4, 8)), "data_shape"),  # any size >= 1 works (padded)
        (dict(data_shape=(8,)), "data_shape"),
    ],
)
def test_bad_model_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


def test_training_data_of_the_wrong_shape_names_the_field():
    model = build_model(ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[2]))
    sampler = build_sampler(SamplerConfig(kind="mala"), 2)
    with pytest.raises(ValueError, match="data_shape"):
        train(model, sampler, torch.rand(4, 1, 8, 9), TrainConfig(epochs=1))


def test_log_likelihood_rejects_unknown_proposal():
    model = build_model(ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[2]))
    with pytest.raises(ValueError, match="proposal"):
        log_likelihood(model, torch.rand(2, 1, 8, 8), proposal="prior")


def test_trainer_starts_the_decoder_at_the_data_mean():
    """An untrained decoder must not need large latents to reach the data's brightness."""
    model = build_model(ModelConfig(data_shape=(1, 8, 8), arch="conv", latent_dims=[4], channels=(4, 8)))
    x = 0.5 + 0.3 * torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    Trainer(model, build_sampler(SamplerConfig(kind="none"), 4), x, TrainConfig(epochs=1))
    assert torch.allclose(model.output_offset, x.mean(0))
    assert model.output_offset in [p for p in model.generative_parameters()]


def test_training_ends_by_fitting_the_sampling_distribution_to_the_training_scans():
    torch.manual_seed(0)
    cfg = ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[3], hidden=(16,))
    model = build_model(cfg)
    x = torch.rand(24, *cfg.data_shape, generator=torch.Generator().manual_seed(0))
    assert not model.sampling_fitted
    train(model, build_sampler(SamplerConfig(kind="none"), 3), x, TrainConfig(pretrain_epochs=2, epochs=0, batch_size=8))
    assert model.sampling_fitted
    # one latent layer: the fitted mean is exactly the mean encoder mean of the training scans
    with torch.no_grad():
        mu, _ = model.encode(x)
    torch.testing.assert_close(model.sampling_loc, mu.mean(0), atol=1e-5, rtol=1e-5)


def test_final_accept_is_the_mean_over_the_last_tenth_of_the_mcmc_epochs():
    from models.training import EpochRecord, TrainHistory

    plain = [EpochRecord(phase=1, epoch=i + 1, loss=1.0, elbo=-1.0, bits_per_dim=0.1) for i in range(5)]
    accepts = [0.9] * 15 + [0.5, 0.7]  # 17 MCMC epochs: the last 10% is the last 2
    mcmc = [EpochRecord(phase=2, epoch=6 + i, loss=1.0, elbo=-1.0, bits_per_dim=0.1, accept=a)
            for i, a in enumerate(accepts)]
    history = TrainHistory(plain + mcmc)
    assert history.final_accept() == pytest.approx(0.6)
    assert history.final_accept(fraction=1.0) == pytest.approx(sum(accepts) / len(accepts))
    assert TrainHistory(plain).final_accept() is None  # no MCMC epochs, no acceptance
    assert TrainHistory(mcmc[:1]).final_accept() == pytest.approx(0.9)  # at least one epoch


def _layout_run(cfg: ModelConfig, channels_last: bool | None, x: torch.Tensor, checkpoints: list | None = None):
    torch.manual_seed(0)
    model = build_model(cfg)
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=2, warmup_steps=3), model.latent_dim)
    trainer = Trainer(model, sampler, x, TrainConfig(pretrain_epochs=2, epochs=1, batch_size=4, seed=1,
                                                     channels_last=channels_last))
    seen = []
    # What the networks see mid-fit: a conv kernel's layout (checked on the first step).
    # (one with several input channels: for one, both layouts have the same strides)
    kernel = next(p for p in model.parameters() if p.dim() == x.dim() and p.shape[1] > 1 and p.shape[2] > 1)
    history = trainer.fit(on_step=lambda done, total: seen.append(kernel.is_contiguous()),
                          checkpoint_every=3, on_checkpoint=[].append if checkpoints is None else checkpoints.append)
    return trainer, history, seen


@pytest.mark.parametrize("cfg", [
    ModelConfig(data_shape=(1, 16, 16, 16), arch="conv", latent_dims=[4], channels=(4, 8)),
    ModelConfig(data_shape=(1, 16, 16, 16), arch="hconv", latent_dims=[4], latent_channels=(2,),
                channels=(4, 8), hidden=(16,)),
    ModelConfig(data_shape=(1, 16, 16), arch="conv", latent_dims=[4], channels=(4, 8)),
], ids=["conv3d", "hconv3d", "conv2d"])
def test_channels_last_training_matches_the_default_layout_on_cpu(cfg):
    x = torch.rand(8, *cfg.data_shape, generator=torch.Generator().manual_seed(0))
    default, default_history, default_seen = _layout_run(cfg, False, x)
    checkpoints = []
    forced, forced_history, forced_seen = _layout_run(cfg, True, x, checkpoints)
    assert default.memory_format is None
    assert forced.memory_format == (torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    # channels-last while fitting, the default layout before and after (saving and sampling)
    assert all(default_seen) and not any(forced_seen)
    assert all(p.is_contiguous() for p in forced.model.parameters())
    # checkpoints taken mid-fit hold default-layout tensors too (weights and Adam's moments)
    adam = [t for s in checkpoints[0]["opt_encoder"]["state"].values() for t in s.values() if t.dim() > 1]
    assert len(checkpoints) == 2 and adam and all(t.is_contiguous() for t in adam)
    assert all(t.is_contiguous() for t in checkpoints[0]["model"].values())
    assert [r.phase for r in forced_history.records] == [1, 1, 2]
    for a, b in zip(default_history.records, forced_history.records):
        assert b.elbo == pytest.approx(a.elbo, rel=1e-4, abs=1e-3), (a, b)
    for (name, a), b in zip(default.model.state_dict().items(), forced.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    gen = lambda: torch.Generator().manual_seed(5)
    torch.testing.assert_close(forced.model.sample(2, generator=gen()), default.model.sample(2, generator=gen()),
                               rtol=1e-3, atol=1e-4)


def test_channels_last_is_off_by_default_on_cpu_and_for_non_conv_archs():
    conv = build_model(ModelConfig(data_shape=(1, 8, 8, 8), arch="conv", latent_dims=[4], channels=(4, 8)))
    mlp = build_model(ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[4], hidden=(16,)))
    flat = build_model(ModelConfig(data_shape=(1, 6), arch="linear", latent_dims=[2]))
    none = SamplerConfig(kind="none")

    def fmt(model, **train):
        x = torch.rand(4, *model.cfg.data_shape)
        return Trainer(model, build_sampler(none, model.latent_dim), x, TrainConfig(epochs=1, **train)).memory_format

    assert fmt(conv) is None  # auto: CPU
    assert fmt(conv, channels_last=True) == torch.channels_last_3d
    assert fmt(mlp, channels_last=True) == torch.channels_last  # its 2-D inputs still can be
    assert fmt(flat, channels_last=True) is None  # (B, 1, 6): no channels-last format of rank 3
    # an MLP forced channels-last trains to the same numbers as in the default layout
    histories = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model(mlp.cfg)
        x = torch.rand(8, *mlp.cfg.data_shape, generator=torch.Generator().manual_seed(0))
        histories.append(train(model, build_sampler(none, 4), x,
                               TrainConfig(pretrain_epochs=2, epochs=0, batch_size=4, channels_last=channels_last)))
    assert [r.elbo for r in histories[1].records] == pytest.approx([r.elbo for r in histories[0].records], rel=1e-5)
