"""Entropy adaptation inside training stays on its acceptance target (issue 12 item 2): the
sampler takes an optimiser step after every transition, and beta starts where the warm-started
step size is in balance."""

from __future__ import annotations

import torch

from models import ModelConfig, SamplerConfig, TrainConfig, Trainer, build_model, build_sampler
from models.samplers.kernels import log_entropy_scale

from .gaussian_targets import independent_target


def _adam_steps(trainer: Trainer) -> int:
    return int(trainer.opt_sampler.state[trainer.sampler.log_step]["step"])


def _trainer(update: str) -> Trainer:
    torch.manual_seed(0)
    model = build_model(ModelConfig(data_shape=(1, 4, 4), arch="mlp", latent_dims=[2], hidden=(8,),
                                    likelihood="bernoulli"))
    sampler = build_sampler(SamplerConfig(kind="mala", n_steps=3, update=update, warmup_steps=2),
                            model.latent_dim)
    x = (torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    return Trainer(model, sampler, x, TrainConfig(pretrain_epochs=1, epochs=2, batch_size=4))


def test_sampler_takes_one_optimiser_step_per_transition_by_default():
    per_step, per_batch = _trainer("per_step"), _trainer("per_batch")
    per_step.fit()
    per_batch.fit()
    minibatches = 2 * 3  # phase-2 epochs x minibatches per epoch
    assert _adam_steps(per_step) == 3 * minibatches
    assert _adam_steps(per_batch) == minibatches


def _speed_measure_grad(sampler, target, z, gen, n: int = 200) -> tuple[float, float]:
    """Mean gradient in log h of -log alpha and of beta H, over n transitions from z."""
    sampler.train()
    accept_part, entropy_part = 0.0, 0.0
    state = None
    for _ in range(n):
        z, info = sampler.step(z, target.log_prob, state, gen)
        state = info.state
        entropy = log_entropy_scale(sampler.log_step, sampler.preconditioner.log_det(), sampler.dim)
        (g_total,) = torch.autograd.grad(info.loss, sampler.log_step)
        (g_entropy,) = torch.autograd.grad(-sampler.beta * entropy, sampler.log_step)
        accept_part += float(g_total - g_entropy) / n
        entropy_part += float(g_entropy) / n
    return accept_part, entropy_part


def _imbalance(balance: bool) -> float:
    """|sum of the forces on log h| / |entropy force| after a warm start; beta held fixed."""
    target = independent_target()
    gen = torch.Generator().manual_seed(0)
    cfg = SamplerConfig(kind="mala", step_size=0.01, beta_init=20.0, beta_rate=0.0)
    sampler = build_sampler(cfg, target.dim)
    z = sampler.warm_start(target.log_prob, target.sample(256, gen), generator=gen, balance_beta=balance)
    accept_part, entropy_part = _speed_measure_grad(sampler, target, z, gen)
    return abs(accept_part + entropy_part) / abs(entropy_part)


def test_balanced_beta_makes_the_warm_started_step_stationary():
    # The two forces on log h cancel to within a fifth of either (the estimate is noisy) ...
    assert _imbalance(balance=True) < 0.2
    # ... where an arbitrary beta leaves a net force that drags h off its target.
    assert _imbalance(balance=False) > 0.5


def test_per_step_adaptation_from_a_balanced_start_holds_the_acceptance_target():
    target = independent_target()
    gen = torch.Generator().manual_seed(0)
    sampler = build_sampler(SamplerConfig(kind="mala", step_size=0.01), target.dim)
    z = sampler.warm_start(target.log_prob, target.sample(256, gen), generator=gen, balance_beta=True)
    optimiser = torch.optim.Adam([p for p in sampler.parameters() if p.requires_grad], lr=0.01)

    def step(loss):
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    sampler.train()
    accepts = []
    for _ in range(100):
        z, infos = sampler.run(z, target.log_prob, n_steps=5, generator=gen, on_loss=step)
        accepts.append(sum(i.diagnostics["accept"] for i in infos) / len(infos))
    windows = [sum(accepts[i:i + 20]) / 20 for i in range(0, 100, 20)]
    assert all(abs(w - 0.574) < 0.05 for w in windows), windows
