"""What a user chooses for an augmentation: the one typed config, torch-free.

``AugmentConfig`` is validated where it is written (the CLI's ``--config`` file, the gateway's
``POST /v1/augmentations`` body) and again by the worker that runs it; keeping it free of torch
lets the gateway refuse an unknown field or a wrong type with a 422 at submit time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .config import SamplerConfig, TrainConfig
from .data.options import PreprocessConfig, QCConfig
from .targets import MAX_SYNTHETIC_PER_CLASS

# A synthetic scan whose RMS voxel distance to its nearest training scan is below this fraction
# of the smallest distance between two distinct training scans is a near-copy: no two real
# subjects are that alike, so it adds no new subject and may leak one.
NEAR_COPY_FRACTION = 0.5

# What new scans get on top of the decoder's mean (AugmentConfig.fine_detail, models/fine_detail.py).
FineDetailPolicy = Literal["nearest", "none"]

# How new minority scans are made (AugmentConfig.generator, models/generators.py).
GeneratorKind = Literal["aggregate", "counterfactual", "interpolation", "variation"]
NEEDS_SHARED = ("counterfactual", "interpolation", "variation")  # both need one model of every class


# What an arch's unset ModelChoice fields default to. The default model is the hierarchy that
# won the harder-cohort comparison (docs/RESULTS.md, session 7): a 16-unit vector latent over one
# 4-channel latent map at the bottleneck (4^3 at 32^3), centered chains over all 272 coordinates.
# A user who picks another arch gets that arch's own defaults, not the hierarchy's maps.
DEFAULT_ARCH = "hconv"
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    DEFAULT_ARCH: {"latent_channels": (4,), "parameterization": "centered"},
}
OTHER_ARCH_DEFAULTS: dict[str, Any] = {"latent_channels": (), "parameterization": "noncentered"}


class ModelChoice(BaseModel):
    """The parts of ModelConfig a user chooses; data_shape comes from preprocessing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arch: str = DEFAULT_ARCH
    latent_dims: list[int] = Field(default_factory=lambda: [16])
    likelihood: str = "gaussian"
    # unset: the arch's own (ARCH_DEFAULTS: centered for hconv, noncentered otherwise)
    parameterization: str = ARCH_DEFAULTS[DEFAULT_ARCH]["parameterization"]
    channels: tuple[int, ...] = (8, 16, 32)
    # arch "hconv": spatial latent maps (models/hierarchy.py); unset: (4,) for hconv, () otherwise
    latent_channels: tuple[int, ...] = ARCH_DEFAULTS[DEFAULT_ARCH]["latent_channels"]
    hidden: tuple[int, ...] = (256,)
    obs_log_var: float = -4.0
    sampling: Literal["prior", "aggregate"] = "aggregate"
    # arch "hconv": where new scans' latent maps come from (ModelConfig.map_sampling)
    map_sampling: Literal["prior", "aggregate", "joint"] = "prior"
    map_temperature: float = Field(1.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _arch_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        arch = data.get("arch", cls.model_fields["arch"].default)
        return {**ARCH_DEFAULTS.get(arch, OTHER_ARCH_DEFAULTS), **data}


class AugmentConfig(BaseModel):
    """How to preprocess, model, train and sample, and what the output holds.

    Minority classes are small, so the training budget is counted in optimiser steps
    (``pretrain_steps`` of plain ELBO, then ``mcmc_steps`` with chains) and turned into
    epochs per class; ``train`` supplies the rest (batch size, learning rates, device).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    # None: defaults for the cohort's 2-D/3-D kind; settings left out take those defaults too.
    preprocess: PreprocessConfig | None = None
    model: ModelChoice = ModelChoice()
    sampler: SamplerConfig = SamplerConfig(kind="mala", adaptation="entropy", preconditioner="diag", n_steps=5)
    train: TrainConfig = TrainConfig(batch_size=8, lr=2e-3)
    pretrain_steps: int = Field(600, ge=0)
    mcmc_steps: int = Field(150, ge=0)
    seed: int = 0
    max_per_class: int = Field(MAX_SYNTHETIC_PER_CLASS, ge=1)
    near_copies: Literal["replace", "keep"] = Field("replace", description=(
        "replace: a synthetic scan nearer a training scan than near_copy_fraction x the smallest "
        "real-to-real distance is redrawn (up to max_redraws times, then left out); keep: "
        "deliver it and only flag it in the report"))
    near_copy_fraction: float = Field(NEAR_COPY_FRACTION, gt=0, le=1)
    fine_detail: FineDetailPolicy = Field("none", description=(
        "generator aggregate only. none (the default): decoder means, which are smoother than real scans "
        "(the report's sharpness check says by how much). nearest: each new scan also gets the fine detail "
        "of the training scan whose reconstruction lies nearest it, that scan minus its reconstruction "
        "(models/fine_detail.py): another subject's detail, so off unless asked; on the harder demo cohort "
        "it lifted the aggregate draws' AUROC at 5x from 0.67 to 0.78 (duplicates 0.88; docs/RESULTS.md). "
        "A scan whose detail keeps it a near-copy goes out as its decoder mean. Saved models never hold "
        "the detail: sample jobs draw decoder means"))
    max_redraws: int = Field(10, ge=0, le=1000, description="redraw rounds per batch of scans")
    retrains: int = Field(1, ge=0, le=3, description=(
        "how many times a model that reconstructs a drawn class's training scans nearly alike (subject "
        "spread below models.report.SUBJECT_SPREAD_WARNING: it learned the class mean, not the subjects) is "
        "trained again from a fresh seed before its scans are drawn. On the harder demo cohort the default "
        "shared model stayed on that plateau on about 1 seed in 7 (docs/RESULTS.md, session 8). Each retrain "
        "costs one more training; 0: never (the report still warns)"))
    model_scope: Literal["per_class", "transfer", "shared"] = Field("shared", description=(
        "shared: one class-conditional model trained on the train scans of every class (the majority "
        "teaches anatomy, the minority its shift), sampled per class; with the default hierarchical model "
        "and fine detail its scans scored above per_class's for a classifier on the harder demo cohort, "
        "but below duplicating the real scans, and with class-balanced training batches below the real "
        "scans alone (AUROC 0.89/0.89/0.85 at 1x/2x/5x extra scans over 10 seeds, per_class 0.88/0.85/0.82, "
        "real only 0.93; docs/RESULTS.md, session 9). "
        "per_class: one model per minority class, trained on that class's train scans only (the default "
        "before session 8, kept for comparison); transfer: per_class, each model starting from a base "
        "model trained (plain ELBO, pretrain_steps) on the train scans of every class"))
    generator: GeneratorKind = Field("variation", description=(
        "how the minority's new scans are made (models/generators.py). variation (the default with "
        "model_scope shared): each train subject of the class in turn, its latents abducted with the tuned "
        "MCMC chain, moved variation_scale prior SDs along the difference of two majority train subjects' "
        "latents (the variation the majority shows, no class effect), decoded, plus the subject's own "
        "residual: derived from that subject. aggregate (the default with per_class and transfer): new "
        "latents from the class's aggregate posterior, decoded (with fine_detail). counterfactual: each "
        "majority train subject moved to the class, plus its own residual. interpolation: between two train "
        "subjects of the class. counterfactual, interpolation and variation need model_scope shared. On the "
        "hard demo cohort (10 seeds) variation matched duplicating the real scans (AUROC 0.926 / 0.918 at "
        "2x / 5x against 0.925 / 0.919) where aggregate lowered it (0.868 / 0.861); none beat duplicates "
        "(docs/RESULTS.md, issue 22); turn on check_utility to measure it on your own cohort"))
    variation_scale: float = Field(0.5, gt=0, le=3, description=(
        "variation: how far each subject moves, in prior standard deviations along the difference of two "
        "majority subjects' refined latents (0.5 keeps the subject recognisable; 1 is a whole subject's spread). "
        "On the hard demo cohort (10 seeds) 1 and 2 served a classifier worse than 0.5, the larger the worse"))
    abduction: Literal["mcmc", "mean"] = Field("mcmc", description=(
        "counterfactual, interpolation and variation: mcmc: the latents of each source scan are abduction_draws "
        "encoder draws moved abduction_steps transitions by the model's tuned kernel, its shift averaged "
        "over them; mean: the encoder's posterior mean"))
    abduction_draws: int = Field(4, ge=1, le=64)
    abduction_steps: int = Field(10, ge=0, le=1000)
    check_utility: bool = Field(False, description=(
        "k-fold self-check on the train split (utility_folds folds): a small classifier with and without "
        "the synthetic scans, scored on the held-out real fold; the report and the job's events say whether "
        "the synthetic scans helped (AUROC and balanced-accuracy differences with a 95 % interval)"))
    utility_folds: int = Field(5, ge=2, le=20)
    check_steps: int = Field(100, ge=1, le=10000, description=(
        "optimiser steps of each small classifier the report trains (fidelity gate, reference share, "
        "utility self-check)"))
    qc: QCConfig = Field(QCConfig(), description=(
        "quality control of every scan before training (models/data/quality.py): thresholds, and "
        "skip_bad_scans to leave a failing scan out of training instead of stopping"))
    real_scans: Literal["preprocessed", "raw"] = Field("preprocessed", description=(
        "preprocessed: the output holds the real scans on the synthetic scans' grid, intensity "
        "scale and clean header; raw: byte copies of the inputs (for labs that preprocess "
        "themselves; headers are not cleaned)"))

    @model_validator(mode="before")
    @classmethod
    def _sections_over_defaults(cls, data: Any) -> Any:
        """A partial ``sampler`` or ``train`` section changes only the keys it names: the rest keep
        augment's own defaults (batch 8, lr 2e-3; MALA x5 with entropy adaptation), not the
        SamplerConfig / TrainConfig class defaults (batch 64, lr 1e-3), which a profile's
        ``train: {batch_size: 8}`` or a user's ``train: {device: cuda}`` would otherwise bring back."""
        if not isinstance(data, dict):
            return data
        for key in ("sampler", "train"):
            if isinstance(data.get(key), dict):
                defaults = cls.model_fields[key].default.model_dump(exclude_unset=True)
                data = {**data, key: {**defaults, **data[key]}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_generator_by_scope(cls, data: Any) -> Any:
        """The default generator is variation, which needs the shared model; with a per_class or
        transfer model it is aggregate, so choosing a scope alone never fails validation."""
        if isinstance(data, dict) and data.get("generator") is None:
            shared = data.get("model_scope", cls.model_fields["model_scope"].default) == "shared"
            data = {**data, "generator": "variation" if shared else "aggregate"}
        return data

    @model_validator(mode="after")
    def _generator_needs_shared(self) -> AugmentConfig:
        if self.generator in NEEDS_SHARED and self.model_scope != "shared":
            raise ValueError(f"generator: {self.generator} needs model_scope shared (one class-conditional model "
                             f"of every class), not {self.model_scope}")
        return self

    def train_config(self, n_scans: int, seed: int) -> TrainConfig:
        """The TrainConfig of one model fitted on ``n_scans`` scans: the step budget
        (pretrain_steps, mcmc_steps) turned into whole epochs of the batch size that fits."""
        batch = min(self.train.batch_size, n_scans)
        steps_per_epoch = -(-n_scans // batch)
        return self.train.model_copy(update={
            "seed": seed, "batch_size": batch,
            "pretrain_epochs": -(-self.pretrain_steps // steps_per_epoch),
            "epochs": -(-self.mcmc_steps // steps_per_epoch)})


def sample_class(meta: dict, n_classes: int, requested: str | None,
                 field: str = "class") -> tuple[str | None, int | None]:
    """Which class a sample of a saved model draws: the one rule of ``mcvae sample --class``,
    the gateway's ``POST /v1/models/{id}/samples`` and the worker's sample job (``label``).

    ``meta``: the saved model's meta (config.json ``meta``: ``classes`` for a class-conditional
    model, ``class`` or ``label`` for a per-class one); ``n_classes``: its ``model.n_classes``.
    A class-conditional model needs ``requested``, one of its classes; for a per-class model it
    may be left out and, if given, must be the model's own class. Returns (label, class index
    of a conditional model or None). Errors are ValueErrors naming ``field``.
    """
    classes = list(meta.get("classes") or [])
    if n_classes:
        if len(classes) != n_classes:
            raise ValueError(f"{field}: the model is class-conditional ({n_classes} classes) but does not "
                             "record their names; it cannot be sampled by class")
        names = ", ".join(classes)
        if requested is None:
            raise ValueError(f"{field}: the model is class-conditional; name the class to draw "
                             f"(classes: {names})")
        if requested not in classes:
            raise ValueError(f"{field}: the model has no class '{requested}' (classes: {names})")
        return requested, classes.index(requested)
    own = meta.get("class") or meta.get("label")
    if requested is not None and requested != own:
        if own:
            raise ValueError(f"{field}: the model was trained on class '{own}' only; it cannot draw "
                             f"'{requested}' (leave {field} out, or give '{own}')")
        raise ValueError(f"{field}: the model was trained on every class together and is not "
                         f"class-conditional; leave {field} out")
    return own, None
