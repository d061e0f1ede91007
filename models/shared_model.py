"""One class-conditional model per cohort (issue 12, item 3): the augment-level entry point.

Instead of one VAE per minority class trained on its few scans, one model learns the train split
of *all* classes with the class as a label (the majority teaches anatomy, the minority its
shift), and minority scans are drawn for the requested class. ``fit_shared_model`` trains it
with the step budget of an ``AugmentConfig`` (as ``models.fitting.fit_class_model`` does per
class); ``sample_class`` draws scans of one class; ``class_view`` gives the label-bound view
that ``models.augment.write_synthetic`` and ``models.evaluation.log_likelihood`` accept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .conditional import ClassView
from .config import ModelConfig, TrainConfig
from .factory import build_model
from .samplers import build_sampler
from .training import Trainer, TrainHistory


@dataclass
class SharedModel:
    model: nn.Module
    sampler: nn.Module
    classes: list[str]  # class index -> label
    history: TrainHistory
    train_cfg: TrainConfig

    def index(self, label: str) -> int:
        if label not in self.classes:
            raise ValueError(f"class '{label}' is not one of the model's classes {self.classes}")
        return self.classes.index(label)


def stack_classes(scans: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
    """{label: (n, *shape)} -> all scans, their class indices, the labels (sorted)."""
    classes = sorted(scans)
    if len(classes) < 2:
        raise ValueError("a shared model needs scans of at least two classes")
    x = torch.cat([scans[c] for c in classes])
    y = torch.cat([torch.full((len(scans[c]),), k, dtype=torch.long) for k, c in enumerate(classes)])
    return x, y, classes


SHARED_KEY = "shared"  # the checkpoint key of the shared model (per-class models use their label)


def fit_shared_model(scans: dict[str, Tensor], model_cfg: ModelConfig, config, seed: int,
                     on_step: Callable[[int, int], None] | None = None,
                     checkpoints=None) -> SharedModel:
    """Train one class-conditional model on the train scans of every class.

    ``model_cfg``: the per-class model's configuration (its ``n_classes`` is set here);
    ``config``: a ``models.augment.AugmentConfig`` (sampler, train settings, step budget).
    Every scan counts once per epoch; the budget in steps is the same as one class model's.
    ``checkpoints``: a ``models.fitting.ClassCheckpoints``; training resumes from the state saved
    under ``SHARED_KEY`` and saves as it goes (and at the end), as ``fit_class_model`` does.
    """
    x, y, classes = stack_classes(scans)
    torch.manual_seed(seed)
    model = build_model(model_cfg.model_copy(update={"n_classes": len(classes)}))
    sampler = build_sampler(config.sampler, model.latent_dim)
    train_cfg = config.train_config(len(x), seed)
    trainer = Trainer(model, sampler, x, train_cfg, labels=y)
    if checkpoints is None:
        return SharedModel(model, sampler, classes, trainer.fit(on_step=on_step), train_cfg)
    state = checkpoints.load(SHARED_KEY)
    if state is not None:
        trainer.load_state_dict(state)
    history = trainer.fit(on_step=on_step, checkpoint_every=checkpoints.every,
                          on_checkpoint=lambda snapshot: checkpoints.save(SHARED_KEY, snapshot))
    if trainer.global_step % checkpoints.every:  # the final state, so a rerun skips training
        checkpoints.save(SHARED_KEY, trainer.state_dict())
    return SharedModel(model, sampler, classes, history, train_cfg)


def class_view(shared: SharedModel, label: str) -> ClassView:
    """The model bound to one class: ``.sample(n, generator)`` draws scans of that class."""
    return ClassView(shared.model, shared.index(label))


@torch.no_grad()
def sample_class(shared: SharedModel, label: str, n: int, seed: int) -> Tensor:
    """n scans (n, *data_shape) of class ``label``, from latents of the model's sampling
    distribution for that class (aggregate posterior of its training scans by default)."""
    view = class_view(shared, label)
    device = next(shared.model.parameters()).device
    return view.sample(n, generator=torch.Generator(device=device).manual_seed(seed))
