"""Non-gradient adaptation rules: the entropy weight beta and dual-averaging step sizes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def update_beta(beta: Tensor, mean_accept: float, target: float, rate: float,
                beta_min: float, beta_max: float) -> Tensor:
    """beta <- clip(beta exp(rho (alpha - alpha*)), beta_min, beta_max): a step in log beta.

    Too many acceptances mean the proposal is timid: weigh its entropy (spread) more. To first
    order this is the paper's beta (1 + rho (alpha - alpha*)); in log space it stays positive and
    symmetric for any rate rho, which lets beta move by orders of magnitude within a short run.
    """
    return (beta * math.exp(rate * (mean_accept - target))).clamp(beta_min, beta_max)


class DualAveraging(nn.Module):
    """Nesterov dual averaging of log h towards a target acceptance (Hoffman & Gelman 2014).

    ``log_step`` is the iterate used while adapting; ``log_step_avg`` the averaged value
    used once adaptation stops.
    """

    def __init__(self, step_size: float, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        super().__init__()
        self.gamma, self.t0, self.kappa = gamma, t0, kappa
        self.register_buffer("mu", torch.tensor(math.log(10.0 * step_size)))
        self.register_buffer("count", torch.tensor(0.0))
        self.register_buffer("error_avg", torch.tensor(0.0))
        self.register_buffer("log_step", torch.tensor(math.log(step_size)))
        self.register_buffer("log_step_avg", torch.tensor(math.log(step_size)))

    @torch.no_grad()
    def update(self, mean_accept: float, target: float) -> None:
        self.count += 1
        t = self.count
        w = 1.0 / (t + self.t0)
        self.error_avg.mul_(1.0 - w).add_(w * (target - mean_accept))
        self.log_step.copy_(self.mu - t.sqrt() / self.gamma * self.error_avg)
        eta = t ** (-self.kappa)
        self.log_step_avg.mul_(1.0 - eta).add_(eta * self.log_step)
