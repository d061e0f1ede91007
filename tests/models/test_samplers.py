"""Kernels against closed forms on Gaussian targets (DESIGN.md section 2)."""

from __future__ import annotations

import math

import pytest
import torch

from models.config import SamplerConfig
from models.samplers import build_sampler

from .gaussian_targets import (
    correlated_target,
    independent_target,
    relative_frobenius,
    scaled_to_unit_diagonal,
)

KERNELS = [(kind, pre) for kind in ("mala", "hmc") for pre in ("diag", "full", "lowrank")]


def _perturb_proposal(sampler, seed: int) -> None:
    """Give (h, C) arbitrary non-identity values, so invariance is checked for a general C."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sampler.named_parameters():
            if name == "log_step":
                param.fill_(math.log(0.6 if sampler.cfg.kind == "mala" else 0.3))
            else:
                param.add_(0.3 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize("kind,preconditioner", KERNELS)
def test_frozen_kernel_leaves_correlated_gaussian_invariant(kind, preconditioner):
    target = correlated_target()
    cfg = SamplerConfig(kind=kind, adaptation="entropy", preconditioner=preconditioner, n_leapfrog=3)
    sampler = build_sampler(cfg, target.dim)
    _perturb_proposal(sampler, seed=3)
    sampler.eval()  # adaptation frozen
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    z0 = target.sample(n, gen)
    z, infos = sampler.run(z0, target.log_prob, n_steps=25, generator=gen)

    accept = sum(i.diagnostics["accept"] for i in infos) / len(infos)
    assert 0.2 < accept < 0.98, f"test needs real moves and real rejections, got acceptance {accept}"
    moved = (z - z0).norm(dim=-1)
    assert float((moved > 0).float().mean()) > 0.9

    # Chains started from exact draws stay exact draws: compare with standard errors of n
    # independent Gaussian vectors. 5 sigma over 8 means and 36 covariances keeps the
    # false-alarm rate below 1e-4 while a wrong Metropolis ratio shifts them far more.
    cov = target.cov
    mean_se = (cov.diagonal() / n).sqrt()
    assert torch.all((z.mean(0) - target.mean).abs() < 5 * mean_se), (z.mean(0) - target.mean) / mean_se
    sample_cov = torch.cov(z.T)
    cov_se = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    z_scores = (sample_cov - cov) / cov_se
    assert z_scores.abs().max() < 5, z_scores


def test_invariance_check_detects_a_wrong_target():
    """The tolerance above has power: chains for a 30% wider target fail it."""
    target = correlated_target()
    wider = type(target)(target.cov * 1.3, target.mean)
    sampler = build_sampler(SamplerConfig(kind="mala", adaptation="fixed", step_size=0.5), target.dim)
    sampler.eval()
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    z, _ = sampler.run(target.sample(n, gen), wider.log_prob, n_steps=25, generator=gen)
    cov = target.cov
    cov_se = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert ((torch.cov(z.T) - cov) / cov_se).abs().max() > 5


def _adapted(kind: str, preconditioner: str, target, n_steps: int = 2000, lr: float = 0.02):
    cfg = SamplerConfig(
        kind=kind, adaptation="entropy", preconditioner=preconditioner, n_leapfrog=3, step_size=0.3
    )
    sampler = build_sampler(cfg, target.dim)
    gen = torch.Generator().manual_seed(2)
    z = sampler.adapt(target.log_prob, target.sample(256, gen), n_steps, lr=lr, generator=gen)
    sampler.eval()
    _, infos = sampler.run(z, target.log_prob, n_steps=200, generator=gen)
    accept = sum(i.diagnostics["accept"] for i in infos) / len(infos)
    return sampler, accept


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,tolerance,accept_range",
    [("mala", 0.10, (0.45, 0.70)), ("hmc", 0.15, (0.45, 0.85))],
)
def test_entropy_adaptation_with_full_c_learns_the_target_covariance(kind, tolerance, accept_range):
    target = correlated_target()
    sampler, accept = _adapted(kind, "full", target)
    error = relative_frobenius(
        scaled_to_unit_diagonal(sampler.proposal_covariance()), scaled_to_unit_diagonal(target.cov)
    )
    assert error < tolerance, error
    assert accept_range[0] < accept < accept_range[1], accept


@pytest.mark.slow
def test_entropy_mala_diag_recovers_marginal_variances():
    target = independent_target()
    sampler, accept = _adapted("mala", "diag", target)
    learned = scaled_to_unit_diagonal(sampler.proposal_covariance()).diagonal()
    expected = scaled_to_unit_diagonal(target.cov).diagonal()
    assert torch.allclose(learned, expected, rtol=0.10), learned / expected
    assert 0.45 < accept < 0.70, accept


def test_entropy_lowrank_captures_correlation_beyond_diagonal():
    target = correlated_target()
    sampler, _ = _adapted("mala", "lowrank", target, n_steps=1500, lr=0.03)
    error = relative_frobenius(
        scaled_to_unit_diagonal(sampler.proposal_covariance()), scaled_to_unit_diagonal(target.cov)
    )
    # diag alone cannot go below the off-diagonal mass of the target, ~0.6 of its norm here.
    assert error < 0.25, error


@pytest.mark.parametrize("kind", ["mala", "hmc"])
def test_dual_averaging_reaches_target_acceptance(kind):
    target = correlated_target()
    cfg = SamplerConfig(kind=kind, adaptation="dual_averaging", step_size=0.05, n_leapfrog=3)
    sampler = build_sampler(cfg, target.dim)
    gen = torch.Generator().manual_seed(4)
    z = sampler.adapt(target.log_prob, target.sample(256, gen), 600, generator=gen)
    sampler.eval()
    _, infos = sampler.run(z, target.log_prob, n_steps=200, generator=gen)
    accept = sum(i.diagnostics["accept"] for i in infos) / len(infos)
    assert abs(accept - cfg.accept_target) < 0.05, (accept, sampler.step_size)


def test_entropy_loss_gradient_reaches_step_size_and_preconditioner():
    target = correlated_target()
    sampler = build_sampler(SamplerConfig(kind="mala", preconditioner="full"), target.dim)
    sampler.train()
    gen = torch.Generator().manual_seed(5)
    _, info = sampler.step(target.sample(64, gen), target.log_prob, generator=gen)
    info.loss.backward()
    grads = {n: p.grad for n, p in sampler.named_parameters()}
    assert grads["log_step"] is not None and grads["log_step"].abs() > 0
    assert grads["preconditioner.lower"].tril(-1).abs().sum() > 0


def test_beta_rule_moves_towards_target_acceptance():
    target = correlated_target()
    cfg = SamplerConfig(kind="mala", adaptation="entropy", step_size=1e-3, beta_rate=0.02)
    sampler = build_sampler(cfg, target.dim)
    sampler.train()
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():  # tiny steps: acceptance ~1 > target, so beta must grow
        sampler.run(target.sample(64, gen), target.log_prob, n_steps=10, generator=gen)
    assert float(sampler.beta) > cfg.beta_init * (1 + 0.02 * 0.3) ** 10
    sampler.eval()
    before = float(sampler.beta)
    sampler.run(target.sample(64, gen), target.log_prob, n_steps=5, generator=gen)
    assert float(sampler.beta) == before, "eval mode must freeze adaptation"


def test_non_finite_proposals_are_rejected():
    def log_prob(z):  # finite only inside the unit ball: far proposals give -inf/NaN
        r = z.norm(dim=-1)
        return torch.where(r < 1, -r**2, torch.full_like(r, float("nan")))

    sampler = build_sampler(SamplerConfig(kind="mala", adaptation="fixed", step_size=2.0), 4)
    sampler.eval()
    z0 = torch.zeros(128, 4)
    z, infos = sampler.run(z0, log_prob, n_steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.all(z.norm(dim=-1) < 1)
    assert all(torch.isfinite(i.accept_prob).all() for i in infos)


def test_none_sampler_returns_encoder_draw():
    z0 = torch.randn(5, 3)
    z, infos = build_sampler(SamplerConfig(kind="none"), 3).run(z0, lambda z: -z.pow(2).sum(-1))
    assert torch.equal(z, z0) and infos == []


@pytest.mark.parametrize(
    "bad,field",
    [
        (dict(kind="gibbs"), "kind"),
        (dict(adaptation="magic"), "adaptation"),
        (dict(preconditioner="sparse"), "preconditioner"),
        (dict(step_size=-1.0), "step_size"),
        (dict(beta_min=10.0, beta_max=1.0), "beta_min"),
    ],
)
def test_bad_sampler_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**bad)


@pytest.mark.parametrize("kind,start", [("mala", 1e-3), ("mala", 5.0), ("hmc", 1e-3)])
def test_warm_start_brings_entropy_adaptation_near_its_acceptance_target_once(kind, start):
    # From a far-off h (acceptance ~1 or ~0), 30 transitions of bracketing search on 256 chains
    # put h where the acceptance is near the target; C and beta stay as they were.
    target = correlated_target()
    cfg = SamplerConfig(kind=kind, adaptation="entropy", step_size=start, n_leapfrog=3, warmup_steps=30)
    sampler = build_sampler(cfg, target.dim)
    gen = torch.Generator().manual_seed(5)
    c_before, beta_before = sampler.preconditioner.dense().clone(), float(sampler.beta)
    z = sampler.warm_start(target.log_prob, target.sample(256, gen), generator=gen)
    assert bool(sampler.warmed_up) and sampler.training
    assert torch.equal(sampler.preconditioner.dense(), c_before) and float(sampler.beta) == beta_before
    sampler.eval()
    _, infos = sampler.run(z, target.log_prob, n_steps=50, generator=gen)
    accept = sum(i.diagnostics["accept"] for i in infos) / len(infos)
    assert abs(accept - cfg.accept_target) < 0.1, (accept, sampler.step_size)  # seen: within 0.04
    h = sampler.step_size
    sampler.train()
    sampler.warm_start(target.log_prob, z, generator=gen)  # already warmed: a no-op
    assert sampler.step_size == h


def test_sampler_states_saved_before_the_warm_start_load_as_warmed():
    cfg = SamplerConfig(kind="mala", adaptation="entropy")
    old = {k: v for k, v in build_sampler(cfg, 4).state_dict().items() if k != "warmed_up"}
    sampler = build_sampler(cfg, 4)
    sampler.load_state_dict(old)  # an adapting sampler of an older run must not be re-warmed
    assert bool(sampler.warmed_up)


def test_warm_start_leaves_other_adaptations_alone():
    target = correlated_target()
    for adaptation in ("dual_averaging", "fixed"):
        sampler = build_sampler(SamplerConfig(kind="mala", adaptation=adaptation, step_size=1e-3), target.dim)
        sampler.warm_start(target.log_prob, target.sample(8, torch.Generator().manual_seed(0)), n_steps=10)
        assert sampler.step_size == pytest.approx(1e-3) and not bool(sampler.warmed_up)


@pytest.mark.parametrize("preconditioner", ["diag", "full", "lowrank"])
def test_unit_det_c_only_shapes_the_proposal_and_h_alone_scales_it(preconditioner):
    target = correlated_target()
    cfg = SamplerConfig(kind="mala", adaptation="entropy", preconditioner=preconditioner)
    sampler = build_sampler(cfg, target.dim)
    _perturb_proposal(sampler, seed=4)
    pre = sampler.preconditioner
    assert float(pre.parameter_log_det()) != pytest.approx(0.0, abs=1e-3)  # S itself is not unit
    assert float(torch.linalg.slogdet(pre.dense())[1]) == pytest.approx(0.0, abs=1e-4)
    assert float(pre.log_det()) == 0.0
    # Rescaling S leaves C (and so the proposal) unchanged.
    covariance = sampler.proposal_covariance()
    with torch.no_grad():
        pre.log_diag.add_(0.7)
        for name, param in pre.named_parameters():
            if name == "lower":
                param.mul_(math.exp(0.7))
            elif name == "factor_u":
                param.mul_(math.exp(0.35))
    torch.testing.assert_close(sampler.proposal_covariance(), covariance, rtol=1e-4, atol=1e-6)
    # The speed measure's gradient moves C's shape only: none of it reaches the scale of S.
    gen = torch.Generator().manual_seed(0)
    sampler.train()
    _, info = sampler.step(target.sample(64, gen), target.log_prob, generator=gen)
    info.loss.backward()
    if preconditioner == "diag":
        assert abs(float(pre.log_diag.grad.sum())) < 1e-4 * float(pre.log_diag.grad.abs().sum())
    assert sampler.log_step.grad is not None and float(sampler.log_step.grad) != 0.0


def test_sampler_states_saved_with_a_free_c_keep_their_proposal_when_loaded():
    target = correlated_target()
    free = build_sampler(SamplerConfig(kind="mala", unit_det_c=False), target.dim)
    _perturb_proposal(free, seed=6)
    old = {k: v for k, v in free.state_dict().items() if k != "unit_det_scale"}  # before the flag
    assert float(free.preconditioner.log_det()) != pytest.approx(0.0, abs=1e-2)
    unit = build_sampler(SamplerConfig(kind="mala"), target.dim)
    unit.load_state_dict(old)
    torch.testing.assert_close(unit.proposal_covariance(), free.proposal_covariance(), rtol=1e-4, atol=1e-7)
    again = build_sampler(SamplerConfig(kind="mala"), target.dim)
    again.load_state_dict(unit.state_dict())  # a unit-det state loads as it is: no second fold
    assert again.step_size == pytest.approx(unit.step_size)
