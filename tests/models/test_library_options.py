"""Library options seen while using it (issue 12 items 1 and 6): exact MLP widths, activation and
init choices, a training thread count, the caller's RNG and modes left alone, the sampler's own
learning rate."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from models import (
    ModelConfig,
    SamplerConfig,
    TrainConfig,
    Trainer,
    build_model,
    build_sampler,
    log_likelihood,
    train,
)

MLP = ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[3], hidden=(16, 12), likelihood="bernoulli")


def _data(n: int = 16) -> torch.Tensor:
    return (torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()


def _linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_hidden_lists_exactly_the_hidden_layers_of_encoder_and_decoder():
    model = build_model(MLP)
    encoder = nn.ModuleList([model.encoder, model.bottom_up, model.posterior_top])
    assert _linear_shapes(encoder) == [(64, 16), (16, 12), (12, 6)]  # 64-16-12-(mu, log std)
    assert _linear_shapes(model.decoder) == [(3, 12), (12, 16), (16, 64)]


@pytest.mark.parametrize("activation, module", [("relu", nn.ReLU), ("silu", nn.SiLU), ("elu", nn.ELU)])
def test_activation_is_a_choice(activation, module):
    model = build_model(MLP.model_copy(update={"activation": activation}))
    found = {type(m) for m in model.modules() if not isinstance(m, (nn.Linear, nn.Sequential))}
    assert module in found
    assert not {nn.ReLU, nn.SiLU, nn.ELU} - {module} & found


def test_xavier_init_zeroes_biases_and_bounds_weights_by_glorot():
    model = build_model(MLP.model_copy(update={"init": "xavier"}))
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
        assert torch.all(layer.bias == 0)
        assert layer.weight.abs().max() <= bound
    torch_default = build_model(MLP)
    assert any(torch.any(m.bias != 0) for m in torch_default.modules() if isinstance(m, nn.Linear))


def test_train_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    model = build_model(MLP)
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=2, warmup_steps=3), model.latent_dim)
    before = torch.get_rng_state()
    train(model, sampler, _data(), TrainConfig(pretrain_epochs=1, epochs=1, batch_size=8, seed=5))
    assert torch.equal(torch.get_rng_state(), before)


def test_training_uses_the_configured_thread_count_and_restores_it():
    previous = torch.get_num_threads()
    wanted = 2 if previous == 1 else 1
    seen = []
    model = build_model(MLP)
    sampler = build_sampler(SamplerConfig(kind="none"), model.latent_dim)
    cfg = TrainConfig(pretrain_epochs=2, epochs=0, batch_size=8, threads=wanted)
    train(model, sampler, _data(), cfg, callback=lambda record: seen.append(torch.get_num_threads()))
    assert seen == [wanted, wanted]
    assert torch.get_num_threads() == previous


@pytest.mark.parametrize("training", [True, False])
def test_log_likelihood_restores_model_and_sampler_modes(training):
    model = build_model(MLP)
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=2), model.latent_dim)
    model.train(training)
    sampler.train(training)
    beta = sampler.beta.clone()
    log_likelihood(model, _data(4), n_particles=8, proposal="mcmc", sampler=sampler,
                   generator=torch.Generator().manual_seed(0))
    assert model.training is training and sampler.training is training
    assert torch.equal(sampler.beta, beta), "estimating must not adapt the sampler"


def _sampler_lr(trainer: Trainer) -> float:
    return trainer.opt_sampler.param_groups[0]["lr"]


def test_sampler_learning_rate_lives_in_the_sampler_config():
    model = build_model(MLP)
    sampler = build_sampler(SamplerConfig(kind="mala", lr=0.05), model.latent_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        trainer = Trainer(model, sampler, _data(), TrainConfig(batch_size=8))
    assert _sampler_lr(trainer) == 0.05


def test_old_train_configs_with_sampler_lr_still_load_with_a_deprecation_warning():
    old = {"pretrain_epochs": 1, "epochs": 1, "batch_size": 8, "sampler_lr": 0.03}
    with pytest.warns(DeprecationWarning, match="SamplerConfig.lr"):
        cfg = TrainConfig.model_validate(old)
    model = build_model(MLP)
    sampler = build_sampler(SamplerConfig(kind="mala"), model.latent_dim)
    assert _sampler_lr(Trainer(model, sampler, _data(), cfg)) == 0.03  # the old field still rules
