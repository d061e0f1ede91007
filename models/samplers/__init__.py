"""MCMC kernels that refine encoder draws, with entropy-based speed-measure adaptation."""

from .preconditioners import (
    DiagPreconditioner,
    FullPreconditioner,
    LowRankPreconditioner,
    Preconditioner,
    build_preconditioner,
)
from .sampler import IdentitySampler, MCMCSampler, build_sampler
from .state import ChainState, StepInfo, evaluate

__all__ = [
    "ChainState",
    "DiagPreconditioner",
    "FullPreconditioner",
    "IdentitySampler",
    "LowRankPreconditioner",
    "MCMCSampler",
    "Preconditioner",
    "StepInfo",
    "build_preconditioner",
    "build_sampler",
    "evaluate",
]
