"""The sampler: an MCMC kernel (MALA or HMC) plus how its proposal is tuned.

``step`` maps chain positions to new positions and an info record (acceptance, the
speed-measure loss, diagnostics), in the style of BlackJAX kernels. Adaptation happens only
in training mode (``sampler.train()``); ``sampler.eval()`` freezes it, and the kernel then
leaves its target invariant.

Adaptation kinds:
- ``entropy``: (h, C) are parameters; ``info.loss = -mean log alpha - beta H`` is minimised by
  the caller's optimiser (or by ``adapt``; in training one step per transition) and beta follows
  the acceptance rule. For MALA, log h also takes a Robbins-Monro step towards the acceptance
  target after every adapting transition (``SamplerConfig.accept_gain``; issue 12: in short
  runs on sharp posteriors the speed measure alone sat far off target, docs/RESULTS.md).
- ``dual_averaging``: C = I, log h by dual averaging towards the target acceptance.
- ``fixed``: C = I, h as configured.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..config import SamplerConfig
from .adaptation import DualAveraging, update_beta
from .kernels import hmc_propose, log_entropy_scale, mala_propose
from .preconditioners import build_preconditioner
from .state import ChainState, LogProbFn, StepInfo, evaluate

# A proposal whose log density or gradient is not finite is rejected; in the loss it counts
# as this log acceptance (a constant, so it pushes no gradient).
_REJECTED_LOG_ACCEPT = -50.0


class MCMCSampler(nn.Module):
    def __init__(self, cfg: SamplerConfig, dim: int) -> None:
        super().__init__()
        if cfg.kind not in ("mala", "hmc"):
            raise ValueError(f"kind: MCMCSampler needs 'mala' or 'hmc', got {cfg.kind!r}")
        if dim < 1:
            raise ValueError(f"dim: latent dimension must be positive, got {dim}")
        self.cfg, self.dim = cfg, dim
        self.learns_proposal = cfg.adaptation == "entropy"
        kind = cfg.preconditioner if self.learns_proposal else "diag"
        self.preconditioner = build_preconditioner(kind, dim, self.learns_proposal, cfg.rank,
                                                   unit_det=self.learns_proposal and cfg.unit_det_c)
        log_h = torch.tensor(math.log(cfg.step_size))
        self.log_step = nn.Parameter(log_h) if self.learns_proposal else nn.Buffer(log_h)
        self.register_buffer("beta", torch.tensor(cfg.beta_init))
        self.register_buffer("warmed_up", torch.zeros((), dtype=torch.bool))  # see warm_start
        # Whether C has unit determinant in this state (see _load_from_state_dict).
        self.register_buffer("unit_det_scale", torch.tensor(self.preconditioner.unit_det))
        self.register_load_state_dict_post_hook(MCMCSampler._fold_scale)
        self.dual_averaging = DualAveraging(cfg.step_size) if cfg.adaptation == "dual_averaging" else None

    # -- the proposal --------------------------------------------------------------------
    def current_log_step(self) -> Tensor:
        if self.dual_averaging is not None:
            da = self.dual_averaging
            return da.log_step if self.training else da.log_step_avg
        return self.log_step

    @property
    def step_size(self) -> float:
        return float(self.current_log_step().detach().exp())

    @property
    def n_leapfrog(self) -> int:
        return self.cfg.n_leapfrog if self.cfg.kind == "hmc" else 1

    def entropy(self) -> Tensor:
        return log_entropy_scale(self.current_log_step(), self.preconditioner.log_det(), self.dim,
                                 self.n_leapfrog)

    def proposal_covariance(self) -> Tensor:
        """h^2 C C^T (for HMC: h^2 times the inverse mass matrix), a (d, d) matrix."""
        with torch.no_grad():
            c = self.preconditioner.dense()
            return self.current_log_step().exp() ** 2 * c @ c.T

    # -- one transition ------------------------------------------------------------------
    def step(
        self,
        z: Tensor,
        log_prob_fn: LogProbFn,
        state: ChainState | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, StepInfo]:
        if state is None or state.z is not z:
            state = evaluate(log_prob_fn, z)
        differentiable = self.training and self.learns_proposal and torch.is_grad_enabled()
        log_h = self.current_log_step()
        if not differentiable:
            log_h = log_h.detach()
        with torch.set_grad_enabled(differentiable):
            proposal, log_accept, finite = self._propose(state, log_prob_fn, log_h, generator)
            log_det = self.preconditioner.log_det()
            entropy = log_entropy_scale(log_h, log_det, self.dim, self.n_leapfrog)
            loss = None
            if differentiable:
                # beta is a constant of this loss (and is updated in place below).
                loss = -log_accept.mean() - self.beta.clone() * entropy

        log_accept = log_accept.detach()
        uniform = torch.rand(log_accept.shape, generator=generator, device=log_accept.device)
        accepted = finite & (uniform.log() < log_accept)
        keep = accepted.unsqueeze(-1)
        next_state = ChainState(
            z=torch.where(keep, proposal.z, state.z),
            log_prob=torch.where(accepted, proposal.log_prob, state.log_prob),
            grad=torch.where(keep, proposal.grad, state.grad),
        )
        accept_prob = log_accept.exp()
        mean_accept = float(accept_prob.mean())
        if self.training:
            self._adapt_rules(mean_accept)
        info = StepInfo(
            accept_prob=accept_prob,
            accepted=accepted,
            loss=loss,
            state=next_state,
            diagnostics={
                "accept": mean_accept,
                "step_size": float(log_h.detach().exp()),
                "beta": float(self.beta),
                "log_det_c": float(log_det.detach()),
                "entropy": float(entropy.detach()),
            },
        )
        return next_state.z, info

    def _propose(self, state: ChainState, log_prob_fn: LogProbFn, log_h: Tensor,
                 generator: torch.Generator | None) -> tuple[ChainState, Tensor, Tensor]:
        """The proposal from ``state``, its log acceptance probability (differentiable in (h, C)
        when grad is on) and whether it is finite."""
        xi = torch.randn(state.z.shape, generator=generator, device=state.z.device)
        if self.cfg.kind == "mala":
            proposal, log_ratio = mala_propose(state, log_prob_fn, log_h, self.preconditioner, xi)
        else:
            proposal, log_ratio = hmc_propose(
                state, log_prob_fn, log_h, self.preconditioner, xi, self.cfg.n_leapfrog
            )
        finite = torch.isfinite(log_ratio) & torch.isfinite(proposal.grad).all(-1)
        safe_ratio = torch.where(finite, log_ratio, torch.full_like(log_ratio, _REJECTED_LOG_ACCEPT))
        return proposal, safe_ratio.clamp(max=0.0), finite

    @torch.no_grad()
    def _adapt_rules(self, mean_accept: float) -> None:
        target = self.cfg.accept_target
        if self.learns_proposal:
            c = self.cfg
            self.beta.copy_(update_beta(self.beta, mean_accept, target, c.beta_rate, c.beta_min, c.beta_max))
            # The speed measure's gradient moves log h by optimiser steps of about lr, and its
            # acceptance term is heavy-tailed (a few far-off proposals dominate -mean log alpha),
            # so (h, C) can sit far off target for hundreds of steps while the model sharpens.
            # A Robbins-Monro step on log h keeps the chain on target; beta's rule meanwhile
            # settles where the speed measure itself no longer pushes h away.
            self.log_step.add_(c.step_gain * (mean_accept - target))
        if self.dual_averaging is not None:
            self.dual_averaging.update(mean_accept, target)

    # -- many transitions ----------------------------------------------------------------
    def run(
        self,
        z0: Tensor,
        log_prob_fn: LogProbFn,
        n_steps: int | None = None,
        generator: torch.Generator | None = None,
        on_loss: Callable[[Tensor], None] | None = None,
    ) -> tuple[Tensor, list[StepInfo]]:
        """n_steps transitions (default cfg.n_steps); returns final positions and the infos.

        ``on_loss(loss)``, if given, runs after each transition that has a speed-measure loss
        (an optimiser step on (h, C)), so the next transition already uses the updated proposal.
        """
        n_steps = self.cfg.n_steps if n_steps is None else n_steps
        z, state, infos = z0.detach(), None, []
        for _ in range(n_steps):
            z, info = self.step(z, log_prob_fn, state, generator)
            state = info.state
            infos.append(info)
            if on_loss is not None and info.loss is not None:
                on_loss(info.loss)
        return z, infos

    @torch.no_grad()
    def warm_start(
        self,
        log_prob_fn: LogProbFn,
        z0: Tensor,
        n_steps: int | None = None,
        generator: torch.Generator | None = None,
        balance_beta: bool = False,
    ) -> Tensor:
        """Entropy adaptation only, once: set h by a bracketing search on the mean acceptance
        over n_steps transitions (default cfg.warmup_steps), C as it is; returns the final states.
        With ``balance_beta``, beta is then set so that this h is a stationary point of the
        speed measure in log h (``balanced_beta``): adaptation starts on target and in balance,
        instead of pulling h off target until beta's rule has caught up.

        The speed measure moves log h by small optimiser steps, so from a poor initial h it needs
        hundreds of updates to reach a useful step (acceptance near 1 or 0 all the while). The
        search doubles or halves h until the acceptance target is bracketed, then bisects in
        log h: about log2(h* / h0) + 8 transitions put h within a few percent of the target's
        step, and the speed measure tunes (h, C) from there.
        """
        n_steps = self.cfg.warmup_steps if n_steps is None else n_steps
        if not self.learns_proposal or bool(self.warmed_up) or n_steps <= 0:
            return z0.detach()
        was_training = self.training
        self.eval()  # no beta rule, no loss: only h changes
        target = self.cfg.accept_target
        log_h, too_small, too_large = self.log_step.detach().clone(), None, None
        z, state = z0.detach(), None
        try:
            for _ in range(n_steps):
                self.log_step.copy_(log_h)
                z, info = self.step(z, log_prob_fn, state, generator)
                state = info.state
                if info.diagnostics["accept"] > target:
                    too_small = log_h.clone()
                else:
                    too_large = log_h.clone()
                if too_small is not None and too_large is not None:
                    log_h = 0.5 * (too_small + too_large)
                else:
                    log_h = log_h + (math.log(2.0) if too_large is None else -math.log(2.0))
            self.log_step.copy_(log_h)
            if balance_beta:
                self.beta.copy_(self.balanced_beta(log_prob_fn, z, generator=generator))
            self.warmed_up.fill_(True)
        finally:
            self.train(was_training)
        return z

    def balanced_beta(self, log_prob_fn: LogProbFn, z: Tensor, n_steps: int = 5,
                      generator: torch.Generator | None = None) -> Tensor:
        """The beta at which the speed measure's gradient in log h vanishes at the current (h, C):
        d(-mean log alpha)/d log h = beta dH/d log h = beta d, with the acceptance gradient
        averaged over n_steps transitions from z (chains move as usual; nothing is adapted),
        clipped to [beta_min, beta_max]."""
        log_h = self.log_step.detach().clone().requires_grad_(True)
        grads, state = [], None
        for _ in range(n_steps):
            if state is None:
                state = evaluate(log_prob_fn, z)
            with torch.enable_grad():
                proposal, log_accept, finite = self._propose(state, log_prob_fn, log_h, generator)
                (grad,) = torch.autograd.grad(-log_accept.mean(), log_h)
            grads.append(grad)
            with torch.no_grad():
                uniform = torch.rand(log_accept.shape, generator=generator, device=log_accept.device)
                keep = (finite & (uniform.log() < log_accept.detach())).unsqueeze(-1)
                state = ChainState(torch.where(keep, proposal.z, state.z),
                                   torch.where(keep[:, 0], proposal.log_prob, state.log_prob),
                                   torch.where(keep, proposal.grad, state.grad))
        beta = torch.stack(grads).mean() / self.dim
        return beta.detach().clamp(self.cfg.beta_min, self.cfg.beta_max)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # States saved before the warm start existed were adapting already: never warm them.
        state_dict.setdefault(prefix + "warmed_up", torch.ones((), dtype=torch.bool))
        # States saved before C had unit determinant hold the scale in both h and C: keep their
        # proposal h^2 C C^T by moving C's scale into h once the parameters are loaded.
        key, unit_det = prefix + "unit_det_scale", self.preconditioner.unit_det
        self._fold_scale_on_load = unit_det and not bool(state_dict.get(key, False))
        state_dict[key] = torch.tensor(unit_det)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _fold_scale(module: MCMCSampler, incompatible_keys) -> None:
        if getattr(module, "_fold_scale_on_load", False):
            with torch.no_grad():
                module.log_step.add_(module.preconditioner.parameter_log_det() / module.dim)
            module._fold_scale_on_load = False

    def adapt(
        self,
        log_prob_fn: LogProbFn,
        z0: Tensor,
        n_steps: int,
        lr: float = 0.01,
        generator: torch.Generator | None = None,
        callback: Callable[[int, StepInfo], None] | None = None,
    ) -> Tensor:
        """Tune the proposal on a fixed target for n_steps transitions; returns final states.

        Entropy adaptation takes Adam steps on ``info.loss`` with a learning rate that decays
        linearly to a tenth, so the final (h, C) is an average rather than the last jitter.
        """
        self.train()
        params = [p for p in self.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=lr) if params else None
        schedule = (
            torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 1.0 - 0.9 * i / max(n_steps, 1))
            if optimiser
            else None
        )
        z, state = z0.detach(), None
        for i in range(n_steps):
            z, info = self.step(z, log_prob_fn, state, generator)
            state = info.state
            if optimiser is not None and info.loss is not None:
                optimiser.zero_grad(set_to_none=True)
                info.loss.backward()
                optimiser.step()
                schedule.step()
            if callback is not None:
                callback(i, info)
        return z


class IdentitySampler(nn.Module):
    """kind 'none': no refinement, the encoder draw is the final state (the plain VAE)."""

    def __init__(self, cfg: SamplerConfig, dim: int) -> None:
        super().__init__()
        self.cfg, self.dim = cfg, dim

    def run(self, z0: Tensor, log_prob_fn: LogProbFn, n_steps: int | None = None,
            generator: torch.Generator | None = None) -> tuple[Tensor, list[StepInfo]]:
        return z0.detach(), []


def build_sampler(cfg: SamplerConfig, dim: int) -> MCMCSampler | IdentitySampler:
    if cfg.kind == "none":
        return IdentitySampler(cfg, dim)
    return MCMCSampler(cfg, dim)
