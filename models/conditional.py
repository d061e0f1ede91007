"""A class-conditional model seen through one label: the unconditional model interface.

A model with ``n_classes > 0`` takes its class as a keyword (``model.log_joint(x, u, y=...)``).
Code written for unconditional models (``models.evaluation.log_likelihood``, the samplers'
targets, ``models.augment.write_synthetic``) calls ``encode(x)``, ``rsample(x)``,
``log_joint(x, u)``, ``sample(n)`` without one; ``ClassView(model, y)`` supplies it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .options import sample_class


class ClassView:
    """``model`` with its label fixed to ``y``: one class index for every item, or a (B,) tensor
    of indices (then x and u hold B rows, or n * B rows sample-major)."""

    def __init__(self, model, y: int | Tensor):
        if not getattr(model.cfg, "n_classes", 0):
            raise ValueError("ClassView: the model is not class-conditional (n_classes=0)")
        self.model, self.y = model, y
        label = torch.as_tensor(y)
        model._onehot(label, 1 if label.dim() == 0 else len(label))  # checks the indices' range

    # the attributes callers read
    @property
    def cfg(self):
        return self.model.cfg

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def training(self) -> bool:
        return self.model.training

    @property
    def sampling_fitted(self) -> bool:
        if torch.as_tensor(self.y).dim() != 0:
            return self.model.sampling_fitted
        return bool(self.model.sampling_is_fitted[int(self.y)])

    def parameters(self):
        return self.model.parameters()

    def eval(self) -> ClassView:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> ClassView:
        self.model.train(mode)
        return self

    # the model interface, with the label supplied
    def encode(self, x: Tensor):
        return self.model.encode(x, y=self.y)

    def rsample(self, x: Tensor, n: int = 1, generator: torch.Generator | None = None):
        return self.model.rsample(x, n=n, generator=generator, y=self.y)

    def log_q(self, x: Tensor, u: Tensor) -> Tensor:
        return self.model.log_q(x, u, y=self.y)

    def log_prior(self, u: Tensor) -> Tensor:
        return self.model.log_prior(u, y=self.y)

    def log_likelihood_given(self, x: Tensor, u: Tensor) -> Tensor:
        return self.model.log_likelihood_given(x, u, y=self.y)

    def log_joint(self, x: Tensor, u: Tensor) -> Tensor:
        return self.model.log_joint(x, u, y=self.y)

    def decode(self, u: Tensor) -> Tensor:
        return self.model.decode(u, y=self.y)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.model.sample_latent(n, generator, y=self.y)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.model.sample(n, generator, y=self.y)


def for_class(model, meta: dict, requested: str | None, field: str = "class"):
    """A saved model ready to draw the class a sample asks for: (a ``ClassView`` of a
    class-conditional model, or the model itself; the class drawn, or None for a model trained
    on every class). The rule is ``models.options.sample_class`` (the gateway checks it too);
    its ValueErrors name ``field``."""
    label, index = sample_class(meta, getattr(model.cfg, "n_classes", 0), requested, field)
    return (model if index is None else ClassView(model, index)), label
