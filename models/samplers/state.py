"""Chain state and per-step information, shared by every kernel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

LogProbFn = Callable[[Tensor], Tensor]  # (B, d) -> (B,)


@dataclass
class ChainState:
    """A batch of chain positions with the log density and its gradient there.

    Carrying ``log_prob`` and ``grad`` to the next step is what makes a MALA step cost one
    new gradient instead of two.
    """

    z: Tensor  # (B, d)
    log_prob: Tensor  # (B,)
    grad: Tensor  # (B, d)


@dataclass
class StepInfo:
    accept_prob: Tensor  # (B,) Metropolis acceptance probability of each chain's proposal
    accepted: Tensor  # (B,) bool
    loss: Tensor | None  # scalar, differentiable in (h, C) when the sampler is adapting by entropy
    state: ChainState  # where the chains are now; pass it to the next step
    diagnostics: dict[str, float] = field(default_factory=dict)


def evaluate(log_prob_fn: LogProbFn, z: Tensor) -> ChainState:
    """log p and grad log p at z, detached (the chains never backpropagate into the target)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_prob = log_prob_fn(z)
        if log_prob.shape != z.shape[:1]:
            raise ValueError(
                f"log_prob_fn must map (B, d) to (B,), got {tuple(log_prob.shape)} for {tuple(z.shape)}"
            )
        (grad,) = torch.autograd.grad(log_prob.sum(), z)
    return ChainState(z.detach(), log_prob.detach().float(), grad.detach().float())
