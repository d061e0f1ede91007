"""Metropolis-adjusted proposals: MALA and HMC with a preconditioner C and step size h.

Each kernel's ``propose`` returns the evaluated proposal and the log Metropolis ratio. When
``differentiable`` is set, the ratio is a function of (h, C) through the reparameterised
proposal z'(xi; h, C): U(z') enters through its first-order surrogate
U(z') + grad U(z')^T (z' - stopgrad z'), which has the exact gradient at no extra network
cost, while grad U at proposed points is a constant (the cheap, biased estimator of the
speed-measure paper). Both kernels are written in the whitened noise xi so that C is never
inverted.
"""

from __future__ import annotations

import math

from torch import Tensor

from .preconditioners import Preconditioner
from .state import ChainState, LogProbFn, evaluate


def _sq_norm(v: Tensor) -> Tensor:
    return v.pow(2).sum(-1)


def _surrogate_log_prob(state: ChainState, z_graph: Tensor) -> Tensor:
    """Value of log p at the proposal, gradient grad log p . dz'/d(h, C)."""
    return state.log_prob + ((z_graph - z_graph.detach()) * state.grad).sum(-1)


def mala_propose(
    state: ChainState,
    log_prob_fn: LogProbFn,
    log_h: Tensor,
    precond: Preconditioner,
    xi: Tensor,
) -> tuple[ChainState, Tensor]:
    """z' = z + h^2/2 C C^T g(z) + h C xi; returns (state at z', log MH ratio)."""
    h = log_h.exp()
    ct_grad = precond.apply_t(state.grad)
    z_prop = state.z + precond.apply(0.5 * h * h * ct_grad + h * xi)
    new = evaluate(log_prob_fn, z_prop)
    # log q(z | z') - log q(z' | z) in terms of xi (no C^{-1} needed):
    # the reverse residual, whitened, is -(xi + h/2 C^T (g(z) + g(z'))).
    reverse = xi + 0.5 * h * (ct_grad + precond.apply_t(new.grad))
    log_ratio = _surrogate_log_prob(new, z_prop) - state.log_prob - 0.5 * _sq_norm(reverse)
    log_ratio = log_ratio + 0.5 * _sq_norm(xi)
    return new, log_ratio


def hmc_propose(
    state: ChainState,
    log_prob_fn: LogProbFn,
    log_h: Tensor,
    precond: Preconditioner,
    xi: Tensor,
    n_leapfrog: int,
) -> tuple[ChainState, Tensor]:
    """L leapfrog steps with mass matrix (C C^T)^-1, momentum p = C^-T xi.

    In the whitened momentum v = C^T p the dynamics read v += h/2 C^T g, z += h C v, and the
    kinetic energy is |v|^2 / 2, so again C is never inverted. Returns the state after L
    steps (one gradient each) and the log MH ratio.
    """
    h = log_h.exp()
    v = xi + 0.5 * h * precond.apply_t(state.grad)
    z = state.z
    current = state
    for leap in range(n_leapfrog):
        z = z + h * precond.apply(v)
        current = evaluate(log_prob_fn, z)
        kick = h if leap < n_leapfrog - 1 else 0.5 * h
        v = v + kick * precond.apply_t(current.grad)
    log_ratio = _surrogate_log_prob(current, z) - state.log_prob - 0.5 * _sq_norm(v)
    log_ratio = log_ratio + 0.5 * _sq_norm(xi)
    return current, log_ratio


def log_entropy_scale(log_h: Tensor, log_det_c: Tensor, dim: int, n_leapfrog: int = 1) -> Tensor:
    """H = d log(h L) + log|det C|: the log volume the proposal spreads over."""
    return dim * (log_h + math.log(n_leapfrog)) + log_det_c
