"""Preconditioners C of MCMC proposals: the proposal covariance is h^2 C C^T.

Every kind exposes the few products the kernels need, batched over chains (rows of v):
``apply(v) = C v``, ``apply_t(v) = C^T v``, ``log_det() = log|det C|`` and ``dense() = C``.
None of them needs C^{-1}: the kernels are written so that the Metropolis ratio only uses
the noise xi and C^T grad U (see kernels.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Preconditioner(nn.Module):
    def __init__(self, dim: int, trainable: bool) -> None:
        super().__init__()
        self.dim = dim
        # log of C's diagonal: positive diagonal by construction.
        log_diag = torch.zeros(dim)
        self.log_diag = nn.Parameter(log_diag) if trainable else nn.Buffer(log_diag)

    def apply(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def apply_t(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def log_det(self) -> Tensor:
        return self.log_diag.sum()

    def dense(self) -> Tensor:
        return self.apply(torch.eye(self.dim, device=self.log_diag.device)).T


class DiagPreconditioner(Preconditioner):
    """C = diag(exp(s)): one scale per latent coordinate."""

    def apply(self, v: Tensor) -> Tensor:
        return v * self.log_diag.exp()

    apply_t = apply


class FullPreconditioner(Preconditioner):
    """C lower-triangular with a positive diagonal: any proposal covariance, O(d^2) per chain."""

    def __init__(self, dim: int, trainable: bool) -> None:
        super().__init__(dim, trainable)
        self.lower = nn.Parameter(torch.zeros(dim, dim), requires_grad=trainable)
        self.register_buffer("_mask", torch.ones(dim, dim).tril(-1), persistent=False)

    def factor(self) -> Tensor:
        return self.lower * self._mask + torch.diag(self.log_diag.exp())

    def apply(self, v: Tensor) -> Tensor:
        return v @ self.factor().T

    def apply_t(self, v: Tensor) -> Tensor:
        return v @ self.factor()

    def dense(self) -> Tensor:
        return self.factor()


class LowRankPreconditioner(Preconditioner):
    """C = D + U U^T (symmetric positive definite), O(d r) per chain for large latents.

    log|det C| = log|det D| + log|det(I_r + U^T D^-1 U)| by the matrix determinant lemma.
    """

    def __init__(self, dim: int, trainable: bool, rank: int = 4) -> None:
        super().__init__(dim, trainable)
        self.rank = min(rank, dim)
        # U = 0 is a saddle of every loss (d(UU^T)/dU = 0 there): start slightly off it,
        # deterministically so that two samplers built alike are alike.
        gen = torch.Generator().manual_seed(dim * 7919 + self.rank)
        init = 1e-2 * torch.randn(dim, self.rank, generator=gen)
        self.factor_u = nn.Parameter(init, requires_grad=trainable)

    def apply(self, v: Tensor) -> Tensor:
        return v * self.log_diag.exp() + (v @ self.factor_u) @ self.factor_u.T

    apply_t = apply  # symmetric

    def log_det(self) -> Tensor:
        u_scaled = self.factor_u * (-self.log_diag).exp().unsqueeze(-1)  # D^-1 U
        capacitance = torch.eye(self.rank, device=u_scaled.device) + self.factor_u.T @ u_scaled
        return self.log_diag.sum() + torch.linalg.slogdet(capacitance)[1]


def build_preconditioner(kind: str, dim: int, trainable: bool, rank: int = 4) -> Preconditioner:
    if kind == "diag":
        return DiagPreconditioner(dim, trainable)
    if kind == "full":
        return FullPreconditioner(dim, trainable)
    if kind == "lowrank":
        return LowRankPreconditioner(dim, trainable, rank)
    raise ValueError(f"preconditioner: unknown kind {kind!r} (expected diag, full or lowrank)")
