"""Gaussian targets with known moments, for checking kernels against closed forms."""

from __future__ import annotations

import torch


class GaussianTarget:
    def __init__(self, cov: torch.Tensor, mean: torch.Tensor | None = None) -> None:
        self.dim = cov.shape[0]
        self.cov = cov
        self.mean = torch.zeros(self.dim) if mean is None else mean
        self.precision = torch.linalg.inv(cov)
        self.chol = torch.linalg.cholesky(cov)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        centred = z - self.mean
        return -0.5 * ((centred @ self.precision) * centred).sum(-1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.mean + torch.randn(n, self.dim, generator=generator) @ self.chol.T


def correlated_target(dim: int = 8, seed: int = 1) -> GaussianTarget:
    """Random rotation of variances spanning a factor 10: strong correlations, no easy axes."""
    gen = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
    variances = torch.logspace(-0.5, 0.5, dim)
    mean = torch.linspace(-1.0, 1.0, dim)
    return GaussianTarget(rotation @ torch.diag(variances) @ rotation.T, mean)


def independent_target(dim: int = 8) -> GaussianTarget:
    """Independent coordinates whose variances span a factor 100."""
    return GaussianTarget(torch.diag(torch.logspace(-1.0, 1.0, dim)))


def scaled_to_unit_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.diagonal().mean()


def relative_frobenius(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))
