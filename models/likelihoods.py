"""Observation models p(x | z), given the decoder's output ``out`` (same shape as x).

Every likelihood has ``log_prob(x, out) -> (B,)``, summed over all data dimensions, and
``mean(out)``: the noise-free scan that sampling writes out.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig

GAUSSIAN_LOG_VAR_RANGE = (-9.0, 3.0)
LOGISTIC_LOG_SCALE_RANGE = (-7.0, 2.0)
N_BINS = 256


def _global_parameter(module: nn.Module, name: str, value: float, learn: bool) -> None:
    """A scalar that is learned, or frozen as a buffer (so it is saved but never optimised)."""
    tensor = torch.tensor(float(value))
    if learn:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


def _sum_data_dims(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def _match_dtype(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # Under autocast the decoder may return bf16; densities are summed over thousands of
    # voxels, so they are computed in x's precision.
    return out.to(x.dtype) if x.is_floating_point() else out


class GaussianLikelihood(nn.Module):
    """x ~ N(out, sigma^2 I) with one global log-variance, clamped to [-9, 3] when used."""

    def __init__(self, log_var: float = -3.0, learn: bool = True):
        super().__init__()
        _global_parameter(self, "log_var", log_var, learn)

    def clamped_log_var(self) -> torch.Tensor:
        return self.log_var.clamp(*GAUSSIAN_LOG_VAR_RANGE)

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        out = _match_dtype(x, out)
        log_var = self.clamped_log_var()
        elementwise = -0.5 * (
            math.log(2 * math.pi) + log_var + (x - out) ** 2 * torch.exp(-log_var)
        )
        return _sum_data_dims(elementwise)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output whose mean scan is ``mean`` (used to initialise the decoder)."""
        return mean


class DiscretizedLogisticLikelihood(nn.Module):
    """Discretised logistic on 256 bins of [0, 1] (PixelCNN++), one global log-scale.

    ``out`` is the location of the logistic used as is (no sigmoid): the two edge bins absorb the
    tails, so a location outside [0, 1] is a valid way to put mass on black or white, and the
    identity keeps the decoder's gradient undamped. ``mean`` clamps it to [0, 1].
    x is snapped to the nearest bin centre k / 255, so continuous intensities are accepted.
    """

    def __init__(self, log_scale: float = -1.5, learn: bool = True):
        super().__init__()
        _global_parameter(self, "log_scale", log_scale, learn)

    def clamped_log_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(*LOGISTIC_LOG_SCALE_RANGE)

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        out = _match_dtype(x, out)
        last = N_BINS - 1
        centre = torch.round(x.clamp(0, 1) * last) / last
        half_bin = 0.5 / last
        log_scale = self.clamped_log_scale()
        inv_scale = torch.exp(-log_scale)
        upper = (centre + half_bin - out) * inv_scale
        lower = (centre - half_bin - out) * inv_scale
        # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))), and a - b is the
        # same bin width / scale for every voxel: no cancellation whatever the location.
        log_width_term = torch.log(-torch.expm1(-(1.0 / last) * inv_scale))
        interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + log_width_term
        first_bin = F.logsigmoid(upper)  # all mass below the first bin's upper edge
        last_bin = F.logsigmoid(-lower)  # all mass above the last bin's lower edge
        log_p = torch.where(
            centre <= 0.0, first_bin, torch.where(centre >= 1.0, last_bin, interior)
        )
        return _sum_data_dims(log_p)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out.clamp(0, 1)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        return mean


class BernoulliLikelihood(nn.Module):
    """x ~ Bernoulli(sigmoid(out)), ``out`` being logits.

    x may be any value in [0, 1] (grey levels): log_prob is then -BCE, as is usual for VAEs,
    which is not a normalised density over [0, 1].
    """

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        out = _match_dtype(x, out)
        return -_sum_data_dims(F.binary_cross_entropy_with_logits(out, x, reduction="none"))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.logit(mean.clamp(1e-3, 1 - 1e-3))


def build_likelihood(cfg: ModelConfig) -> nn.Module:
    if cfg.likelihood == "gaussian":
        return GaussianLikelihood(cfg.obs_log_var, cfg.learn_obs_var)
    if cfg.likelihood == "logistic":
        # obs_log_var is a log-variance; the logistic's parameter is a log-scale, hence the half.
        return DiscretizedLogisticLikelihood(cfg.obs_log_var / 2, cfg.learn_obs_var)
    if cfg.likelihood == "bernoulli":
        return BernoulliLikelihood()
    raise ValueError(f"likelihood: unknown kind {cfg.likelihood!r}")
