"""Held-out log-likelihood by importance sampling, in nats and bits per dimension.

log p(x) ~= logmeanexp_s [log p(x, u_s) - log r(u_s)], u_s ~ r, computed in the model's chain
space. Proposals r are defensive mixtures so that a too-narrow encoder cannot blow up the
estimator's variance:
- ``encoder``: 1/2 the encoder's q + 1/2 a Gaussian with q's mean and 1.5x its std;
- ``mcmc``: 1/2 a Gaussian around each item's chain end state z_K (encoder std) + 1/2 the
  encoder proposal above. z_K comes from a separate chain run and is fixed before drawing,
  so r is a proper density and the estimate stays unbiased in p(x).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

INFLATION = 1.5
_LOG_HALF = math.log(0.5)


def _gaussian_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    z = (u - mean) * (-log_std).exp()
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def _mix(a: Tensor, b: Tensor) -> Tensor:
    return torch.logaddexp(a, b) + _LOG_HALF


@torch.no_grad()
def _log_weights_chunk(model, x, mean, log_std, centre, n, generator) -> Tensor:
    """log w for n particles per item, (n, B)."""
    b, d = mean.shape
    x_rep = x.repeat(n, *([1] * (x.dim() - 1)))
    # Choose a component per particle, draw from it, then score under the whole mixture.
    q_draw, _ = model.rsample(x, n=n, generator=generator)
    noise = torch.randn(n * b, d, generator=generator, device=mean.device)
    wide = mean.repeat(n, 1) + INFLATION * log_std.exp().repeat(n, 1) * noise
    pick = torch.rand(n * b, generator=generator, device=mean.device)
    if centre is None:
        u = torch.where((pick < 0.5).unsqueeze(-1), q_draw, wide)
    else:
        near = centre.repeat(n, 1) + log_std.exp().repeat(n, 1) * noise
        encoder_part = torch.where((pick < 0.75).unsqueeze(-1), q_draw, wide)
        u = torch.where((pick < 0.5).unsqueeze(-1), near, encoder_part)
    log_r = _mix(model.log_q(x, u), _gaussian_log_prob(u, mean.repeat(n, 1), log_std.repeat(n, 1) + math.log(INFLATION)))
    if centre is not None:
        log_r = _mix(_gaussian_log_prob(u, centre.repeat(n, 1), log_std.repeat(n, 1)), log_r)
    log_w = model.log_joint(x_rep, u) - log_r
    return log_w.view(n, b)


def _log_weights(model, x, n_particles, proposal, sampler, chunk, generator) -> Tensor:
    """log w, (n_particles, B), with model (and sampler) in eval mode."""
    with torch.no_grad():
        mean, log_var = model.encode(x)
    log_std = 0.5 * log_var
    centre = None
    if proposal == "mcmc":
        if sampler is None or getattr(sampler, "cfg", None) is None or sampler.cfg.kind == "none":
            raise ValueError("sampler: proposal 'mcmc' needs an MCMC sampler (kind mala or hmc)")
        sampler.eval()
        with torch.no_grad():
            u0, _ = model.rsample(x, generator=generator)
        centre, _ = sampler.run(u0, lambda u: model.log_joint(x, u), generator=generator)
    chunks = []
    done = 0
    while done < n_particles:
        n = min(chunk, n_particles - done)
        chunks.append(_log_weights_chunk(model, x, mean, log_std, centre, n, generator))
        done += n
    return torch.cat(chunks, 0)


def log_likelihood(
    model: nn.Module,
    x: Tensor,
    n_particles: int = 1000,
    proposal: Literal["encoder", "mcmc"] = "encoder",
    sampler: nn.Module | None = None,
    chunk: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-sampled log p(x) per item, (B,), in nats."""
    if proposal not in ("encoder", "mcmc"):
        raise ValueError(f"proposal: expected 'encoder' or 'mcmc', got {proposal!r}")
    if n_particles < 1:
        raise ValueError(f"n_particles: must be positive, got {n_particles}")
    modes = [(m, m.training) for m in (model, sampler) if m is not None]
    model.eval()  # and the sampler, below: no adaptation while estimating
    try:
        log_w = _log_weights(model, x, n_particles, proposal, sampler, chunk, generator)
    finally:
        for module, was_training in modes:  # the caller's modes, whatever happened
            module.train(was_training)
    return torch.logsumexp(log_w, 0) - math.log(n_particles)


def bits_per_dim(log_px: Tensor | float, n_dims: int) -> Tensor | float:
    """Convert log p(x) in nats (per item) to bits per data dimension (lower is better)."""
    return -log_px / (n_dims * math.log(2))
