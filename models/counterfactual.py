"""Counterfactual scans: a real subject of one class, as the model says it would look in another.

Abduction, action, prediction (Pearl's three steps) on a class-conditional VAE:

1. *abduction*: latents u ~ p(u | x, y = source class), from the encoder and refined by the
   model's own tuned MCMC kernel (``abduction="mcmc"``), or the encoder's mean alone ("mean");
   the latents are then read as the model's exogenous noise (``model.exogenous``): what the
   subject keeps when its class changes;
2. *action*: the label is set to the target class;
3. *prediction*: the noise is pushed through the target class's prior (``model.from_exogenous``)
   and decoded. The subject's own residual ``x - decode(u, y_source)`` (the detail that the few
   latents do not hold: texture, noise, fine edges) is added back, so the counterfactual is

       x_cf = x + E_u[ decode(u', y_target) - decode(u, y_source) ],

   the subject's scan plus the model's predicted class shift (averaged over the chain's draws).

The counterfactual carries no other person's data and is as sharp as the real scan it comes from;
it is also derived from that subject: the sidecar says so (README, "Sharing synthetic scans").

Two same-class uses of the refined latents sit beside it: ``interpolations`` (between two
subjects of the class) and ``variations`` (a subject of the class moved along the difference
between two subjects of another class: the variation that class shows, which holds no class
effect, so the subject keeps its own; the same residual rule keeps it as sharp as its scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Abduction = Literal["mcmc", "mean"]


@dataclass
class AbductionInfo:
    accept: float | None  # mean acceptance of the abduction chains (None without MCMC)
    steps: int
    draws: int


def _device(model) -> torch.device:
    return next(iter(model.parameters())).device


def abduct(model, sampler, x: Tensor, y: int, how: Abduction = "mcmc", draws: int = 4, steps: int = 10,
           generator: torch.Generator | None = None) -> tuple[Tensor, AbductionInfo]:
    """Latents of scans ``x`` (B, *data_shape) under class index ``y``, in chain space:
    (draws * B, latent_dim), sample-major. ``mcmc``: ``draws`` encoder draws per scan, each moved
    ``steps`` transitions of ``sampler`` (frozen: it leaves p(u | x, y) invariant); ``mean``: the
    encoder's posterior mean, once."""
    if how == "mean" or sampler is None or not hasattr(sampler, "step"):
        with torch.no_grad():
            return model.encode(x, y=y)[0], AbductionInfo(None, 0, 1)
    was_training = sampler.training
    sampler.eval()
    try:
        with torch.no_grad():
            u0, _ = model.rsample(x, n=draws, generator=generator, y=y)
        u, infos = sampler.run(u0, lambda u: model.log_joint(x, u, y=y), n_steps=steps, generator=generator)
    finally:
        sampler.train(was_training)
    accepts = [float(i.accept_prob.mean()) for i in infos]
    return u.detach(), AbductionInfo(sum(accepts) / len(accepts) if accepts else None, steps, draws)


@torch.no_grad()
def class_shift(model, u: Tensor, y_from: int, y_to: int, rows: int) -> Tensor:
    """E_u[decode(u', y_to) - decode(u, y_from)] over the draws of each of ``rows`` scans
    (u: (draws * rows, d), sample-major): the model's change of each subject, (rows, *data_shape)."""
    moved = model.from_exogenous(model.exogenous(u, y=y_from), y=y_to)
    delta = model.decode(moved, y=y_to) - model.decode(u, y=y_from)
    return delta.view(-1, rows, *delta.shape[1:]).mean(0)


def counterfactuals(model, sampler, x: Tensor, y_from: int, y_to: int, how: Abduction = "mcmc",
                    draws: int = 4, steps: int = 10, seed: int = 0, batch: int = 16,
                    value_range: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor, AbductionInfo]:
    """The scans ``x`` (of class index ``y_from``, on the CPU) moved to class ``y_to``: returns
    (counterfactual scans clipped to ``value_range``, the shift added to each, abduction info),
    on the CPU. ``model``: a class-conditional VAE (``exogenous``, ``from_exogenous``)."""
    device = _device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    shifts, accepts, info = [], [], AbductionInfo(None, 0, 1)
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch].to(device).float()
        u, info = abduct(model, sampler, chunk, y_from, how, draws, steps, generator)
        shifts.append(class_shift(model, u, y_from, y_to, len(chunk)).cpu())
        if info.accept is not None:
            accepts.append((info.accept, len(chunk)))
    shift = torch.cat(shifts) if shifts else torch.zeros_like(x)
    if accepts:
        info = AbductionInfo(sum(a * n for a, n in accepts) / sum(n for _, n in accepts), info.steps, info.draws)
    return (x.float() + shift).clamp(*value_range), shift, info


@torch.no_grad()
def interpolations(model, sampler, x: Tensor, y: int, pairs: list[tuple[int, int]], weights: list[float],
                   how: Abduction = "mcmc", draws: int = 4, steps: int = 10, seed: int = 0,
                   value_range: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, AbductionInfo]:
    """New scans of class ``y`` between pairs of its scans ``x``: the two subjects' refined
    latents (posterior means of the abduction draws) mixed as (1 - t) u_i + t u_j, decoded, plus
    their residuals mixed with variance-preserving weights (so the mix is not smoother than
    either). ``pairs[k] = (i, j)``, ``weights[k] = t``."""
    device = _device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    xs = x.to(device).float()
    with torch.enable_grad():
        u, info = abduct(model, sampler, xs, y, how, draws, steps, generator)
    u = u.view(-1, len(xs), u.shape[-1]).mean(0)
    residual = xs - model.decode(u, y=y)
    i, j = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    t = torch.tensor(weights, device=device, dtype=u.dtype)
    mixed = model.decode((1 - t)[:, None] * u[i] + t[:, None] * u[j], y=y)
    shape = (-1,) + (1,) * (xs.dim() - 1)
    a, b = (1 - t).view(shape), t.view(shape)
    detail = (a * residual[i] + b * residual[j]) / torch.sqrt(a**2 + b**2)
    return (mixed + detail).cpu().clamp(*value_range), info


class Variations:
    """Subjects ``x`` of class ``y``, abducted once, to be moved along differences of subjects of
    ``x_other`` (class ``y_other``) by ``__call__(picks, scale)``; each ``x_other`` subject is
    abducted when a pick first uses it, so redraws reuse every latent already found. Latents:
    posterior means of the abduction draws (``how``, as for counterfactuals)."""

    def __init__(self, model, sampler, x: Tensor, y: int, x_other: Tensor, y_other: int, how: Abduction = "mcmc",
                 draws: int = 4, steps: int = 10, seed: int = 0, batch: int = 16):
        self.model, self.sampler, self.how, self.draws, self.steps, self.batch = model, sampler, how, draws, steps, batch
        self.y, self.x_other, self.y_other = y, x_other, y_other
        self.device = _device(model)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._accepts: list[tuple[float, int]] = []
        model.eval()
        self.noise, self.residual = self._abduct(x, y)
        self._other: dict[int, Tensor] = {}

    @property
    def info(self) -> AbductionInfo:
        total = sum(n for _, n in self._accepts)
        accept = sum(a * n for a, n in self._accepts) / total if total else None
        return AbductionInfo(accept, self.steps if accept is not None else 0, self.draws if accept is not None else 1)

    def _abduct(self, scans: Tensor, label: int) -> tuple[Tensor, Tensor]:
        """Exogenous noise of each scan (posterior mean of the abduction draws) and its residual."""
        noise, residuals = [], []
        for start in range(0, len(scans), self.batch):
            chunk = scans[start:start + self.batch].to(self.device).float()
            u, info = abduct(self.model, self.sampler, chunk, label, self.how, self.draws, self.steps, self.generator)
            if info.accept is not None:
                self._accepts.append((info.accept, len(chunk)))
            with torch.no_grad():
                u = u.view(-1, len(chunk), u.shape[-1]).mean(0)
                noise.append(self.model.exogenous(u, y=label))
                residuals.append(chunk - self.model.decode(u, y=label))
        return torch.cat(noise), torch.cat(residuals)

    @torch.no_grad()
    def __call__(self, picks: list[tuple[int, int, int]], scale: float = 0.5,
                 value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """Subject ``a`` moved by ``scale * (e_i - e_j) / sqrt(2)`` for each ``(a, i, j)`` in ``picks``
        (the sqrt(2) makes the step ``scale`` prior standard deviations), decoded under ``y``, plus
        subject ``a``'s own residual; clipped to ``value_range``, on the CPU."""
        if not picks:
            return torch.empty(0, *self.residual.shape[1:])
        new = sorted({k for _, i, j in picks for k in (i, j)} - set(self._other))
        if new:
            with torch.enable_grad():
                noise, _ = self._abduct(self.x_other[new], self.y_other)
            self._other.update(zip(new, noise))
        a = torch.tensor([p[0] for p in picks], device=self.device)
        e_i = torch.stack([self._other[p[1]] for p in picks])
        e_j = torch.stack([self._other[p[2]] for p in picks])
        moved = self.noise[a] + scale * (e_i - e_j) / 2 ** 0.5
        out = torch.cat([self.model.decode(self.model.from_exogenous(moved[k:k + self.batch], y=self.y), y=self.y)
                         for k in range(0, len(picks), self.batch)])
        return (out + self.residual[a]).cpu().clamp(*value_range)


def variations(model, sampler, x: Tensor, y: int, x_other: Tensor, y_other: int, picks: list[tuple[int, int, int]],
               scale: float = 0.5, how: Abduction = "mcmc", draws: int = 4, steps: int = 10, seed: int = 0,
               value_range: tuple[float, float] = (0.0, 1.0), batch: int = 16) -> tuple[Tensor, AbductionInfo]:
    """New scans of class ``y``: subject ``a`` of ``x`` moved in the model's exogenous space by
    ``scale * (e_i - e_j) / sqrt(2)``, the difference between subjects ``i`` and ``j`` of ``x_other``
    (class ``y_other``), decoded under ``y``, plus subject ``a``'s own residual (``Variations``,
    once). ``picks[k] = (a, i, j)``. Only the difference of two subjects of one class is used: it is
    the spread of pose, anatomy, contrast and ageing that class shows, not its class effect, so the
    moved subject keeps what makes it class ``y``."""
    source = Variations(model, sampler, x, y, x_other, y_other, how, draws, steps, seed, batch)
    return source(picks, scale, value_range), source.info
