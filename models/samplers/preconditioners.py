"""Preconditioners C of MCMC proposals: the proposal covariance is h^2 C C^T.

Every kind exposes the few products the kernels need, batched over chains (rows of v):
``apply(v) = C v``, ``apply_t(v) = C^T v``, ``log_det() = log|det C|`` and ``dense() = C``.
None of them needs C^{-1}: the kernels are written so that the Metropolis ratio only uses
the noise xi and C^T grad U (see kernels.py).

With ``unit_det`` (the default of ``SamplerConfig.unit_det_c``) C is its parameters' matrix S
divided by |det S|^(1/d): C only shapes the proposal and h alone scales it. The proposal only
depends on h^2 C C^T, so with both free the speed measure's optimiser moved the one scale twice
per step (once through log h, once through every log c_i) while the acceptance correction acts
on log h alone; the chain then sat off its target by about lr / accept_gain, with h and C
drifting apart without bound (issue 12, docs/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Preconditioner(nn.Module):
    """Subclasses define S by ``_mul_s``, ``_mul_s_t`` and ``_log_det_s``; C is S, or S rescaled to
    unit determinant (``unit_det``)."""

    def __init__(self, dim: int, trainable: bool, unit_det: bool = False) -> None:
        super().__init__()
        self.dim, self.unit_det = dim, unit_det
        # log of S's diagonal: positive diagonal by construction.
        log_diag = torch.zeros(dim)
        self.log_diag = nn.Parameter(log_diag) if trainable else nn.Buffer(log_diag)

    def _mul_s(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def _mul_s_t(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_det_s(self) -> Tensor:
        return self.log_diag.sum()

    def _scale(self) -> Tensor | float:
        return (-self._log_det_s() / self.dim).exp() if self.unit_det else 1.0

    def apply(self, v: Tensor) -> Tensor:
        return self._mul_s(v) * self._scale()

    def apply_t(self, v: Tensor) -> Tensor:
        return self._mul_s_t(v) * self._scale()

    def log_det(self) -> Tensor:
        return torch.zeros((), device=self.log_diag.device) if self.unit_det else self._log_det_s()

    def parameter_log_det(self) -> Tensor:
        """log|det S| of the parameters (with ``unit_det``, C's scale that h has taken over)."""
        return self._log_det_s().detach()

    def dense(self) -> Tensor:
        return self.apply(torch.eye(self.dim, device=self.log_diag.device)).T


class DiagPreconditioner(Preconditioner):
    """S = diag(exp(s)): one scale per latent coordinate."""

    def _mul_s(self, v: Tensor) -> Tensor:
        return v * self.log_diag.exp()

    _mul_s_t = _mul_s


class FullPreconditioner(Preconditioner):
    """S lower-triangular with a positive diagonal: any proposal covariance, O(d^2) per chain."""

    def __init__(self, dim: int, trainable: bool, unit_det: bool = False) -> None:
        super().__init__(dim, trainable, unit_det)
        self.lower = nn.Parameter(torch.zeros(dim, dim), requires_grad=trainable)
        self.register_buffer("_mask", torch.ones(dim, dim).tril(-1), persistent=False)

    def factor(self) -> Tensor:
        return self.lower * self._mask + torch.diag(self.log_diag.exp())

    def _mul_s(self, v: Tensor) -> Tensor:
        return v @ self.factor().T

    def _mul_s_t(self, v: Tensor) -> Tensor:
        return v @ self.factor()

    def dense(self) -> Tensor:
        return self.factor() * self._scale()


class LowRankPreconditioner(Preconditioner):
    """S = D + U U^T (symmetric positive definite), O(d r) per chain for large latents.

    log|det S| = log|det D| + log|det(I_r + U^T D^-1 U)| by the matrix determinant lemma.
    """

    def __init__(self, dim: int, trainable: bool, rank: int = 4, unit_det: bool = False) -> None:
        super().__init__(dim, trainable, unit_det)
        self.rank = min(rank, dim)
        # U = 0 is a saddle of every loss (d(UU^T)/dU = 0 there): start slightly off it,
        # deterministically so that two samplers built alike are alike.
        gen = torch.Generator().manual_seed(dim * 7919 + self.rank)
        init = 1e-2 * torch.randn(dim, self.rank, generator=gen)
        self.factor_u = nn.Parameter(init, requires_grad=trainable)

    def _mul_s(self, v: Tensor) -> Tensor:
        return v * self.log_diag.exp() + (v @ self.factor_u) @ self.factor_u.T

    _mul_s_t = _mul_s  # symmetric

    def _log_det_s(self) -> Tensor:
        u_scaled = self.factor_u * (-self.log_diag).exp().unsqueeze(-1)  # D^-1 U
        capacitance = torch.eye(self.rank, device=u_scaled.device) + self.factor_u.T @ u_scaled
        return self.log_diag.sum() + torch.linalg.slogdet(capacitance)[1]


def build_preconditioner(kind: str, dim: int, trainable: bool, rank: int = 4,
                         unit_det: bool = False) -> Preconditioner:
    if kind == "diag":
        return DiagPreconditioner(dim, trainable, unit_det)
    if kind == "full":
        return FullPreconditioner(dim, trainable, unit_det)
    if kind == "lowrank":
        return LowRankPreconditioner(dim, trainable, rank, unit_det)
    raise ValueError(f"preconditioner: unknown kind {kind!r} (expected diag, full or lowrank)")
