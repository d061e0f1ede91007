"""How the model(s) a cohort's classes are drawn from get fitted: one fitter per ``model_scope``.

- ``shared``: one class-conditional model on the train scans of every class
  (``models.shared_model``), saved under ``models/shared``; each class draws from its view of it;
- ``transfer``: a base model on the train scans of every class (``fit_base_model``; not
  delivered: it learned every class), then one model per class starting from its weights;
- ``per_class``: one model per class on that class's train scans alone.

``fit_models(request)`` yields one ``ClassModel`` per requested class, in order: what draws the
class and what the report says about it. The per-class fitters train a class's model when it is
asked for, so the caller draws and reports a class before the next one trains. Every fitter
trains again (``config.retrains``, from a fresh seed) while a model reconstructs a drawn class's
scans nearly alike (``fit_learning_subjects``), saves the kept model under ``models/<key>``,
moves the job's progress, and raises ``TrainingCancelled`` when the caller asks it to stop.
How a class's scans are then drawn is ``models.generators``' business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import save
from .checks import training_sharpness
from .config import ModelConfig, SamplerConfig
from .data import PreprocessConfig
from .factory import build_model
from .fine_detail import reconstruct
from .options import AugmentConfig
from .report import subject_spread
from .samplers import build_sampler
from .shared_model import SHARED_KEY, SharedModel, class_view, fit_shared_model
from .training import Trainer, TrainHistory, TrainingCancelled

__all__ = ["BASE_KEY", "FITTERS", "RETRAIN_KEY", "ClassCheckpoints", "ClassModel", "FitRequest", "Progress",
           "fit_base_model", "fit_class_model", "fit_learning_subjects", "fit_models", "fit_transfer_model",
           "learned_spread"]

Progress = Callable[[str, float], None]  # (stage, fraction of the whole job done)
BASE_KEY = "(base)"  # the checkpoint key of model_scope "transfer"'s base model (not a likely label)
RETRAIN_SEED_STEP = 7919  # a retrained model's seed: the first one's plus this per retrain
RETRAIN_KEY = "~retrain"  # a retrained model's checkpoint key: the model's own, this, and the retrain number
SEED_STEP = 1009  # the first model's seed: config.seed times this (plus the class's position, per class)


@dataclass
class ClassCheckpoints:
    """Where a caller keeps training state per class, so that a rerun of a stopped augmentation
    resumes each class model from its last checkpoint instead of from scratch (the workers store
    them as artifacts). ``load(label)`` returns the last saved Trainer state or None. With
    ``model_scope: shared`` the one shared model is saved and loaded under the key ``"shared"``
    (``models.shared_model.SHARED_KEY``)."""

    every: int
    save: Callable[[str, dict[str, Any]], None]
    load: Callable[[str], dict[str, Any] | None]

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"checkpoints.every: must be a positive number of steps, got {self.every}")


@dataclass
class FitRequest:
    """What the fitters need: the cohort's scans, the rows they may learn from, the classes to
    fit for, and the job around them (where to save, progress, stop, checkpoints, notes)."""

    x: torch.Tensor  # every real scan, preprocessed (N, *data_shape)
    labels: list[str]  # label per row of x
    train_idx: list[int]  # rows the models may learn from
    sources: list[str]  # each row's source_path (the saved models' ``trained_on``)
    classes: list[str]  # the classes to draw, in order
    config: AugmentConfig
    pre: PreprocessConfig  # the scans' preprocessing, saved with each model
    staging: Path  # the output folder: models go under models/<key>
    job_id: str
    report: Progress
    should_stop: Callable[[], bool] | None = None
    checkpoints: ClassCheckpoints | None = None
    notes: list[str] | None = None  # a retrain's note is added here

    @property
    def model_cfg(self) -> ModelConfig:
        return ModelConfig(data_shape=(1, *self.pre.target_shape), **self.config.model.model_dump())

    def rows_of(self, label: str) -> list[int]:
        """The train rows of one class."""
        return [i for i in self.train_idx if self.labels[i] == label]


@dataclass
class ClassModel:
    """One class's fitted model, as the drawing and the report need it."""

    label: str
    model: Any  # what draws this class: its own model, or a ClassView of the shared one
    shared: SharedModel | None  # the shared model (model_scope shared), else None
    history: TrainHistory
    train_seconds: float  # every attempt of its training (the shared model's, shared)
    key: str  # what it is saved and named under: "shared" or the label (models/<key>, "<job>/<key>")
    model_dir: Path
    model_id: str
    seed: int  # the seed its draws derive from (they use seed + 1)
    retrains: int  # trainings after the first
    spread: dict[str, Any] | None  # report.subject_spread of the kept model on the class's scans
    learned_from: list[int]  # the train rows it learned from, this class's first
    n_base: int | None  # model_scope transfer: the rows its base model learned from
    progress: tuple[float, float]  # (start, width) of this class's share of the job's progress


def fit_class_model(x: torch.Tensor, model_cfg: ModelConfig, config: AugmentConfig, seed: int,
                    on_step: Callable[[int, int], None] | None = None,
                    checkpoints: ClassCheckpoints | None = None, label: str = "",
                    init: dict[str, torch.Tensor] | None = None):
    """Train one model on one class's scans with the step budget of ``config``; with
    ``checkpoints``, resume from the class's last saved state and save as it goes (and at the end).
    ``init``: starting weights (a base model's state dict, model_scope "transfer"); the decoder's
    output offset still restarts at this class's mean scan.

    Returns (model, sampler, history, the TrainConfig used).
    """
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    if init is not None:
        model.load_state_dict(init)
    sampler = build_sampler(config.sampler, model.latent_dim)
    train_cfg = config.train_config(len(x), seed)
    trainer = Trainer(model, sampler, x, train_cfg)
    if checkpoints is None:
        return model, sampler, trainer.fit(on_step=on_step), train_cfg
    state = checkpoints.load(label)
    if state is not None:
        trainer.load_state_dict(state)
    history = trainer.fit(on_step=on_step, checkpoint_every=checkpoints.every,
                          on_checkpoint=lambda snapshot: checkpoints.save(label, snapshot))
    if trainer.global_step % checkpoints.every:  # the final state, so a rerun skips this class
        checkpoints.save(label, trainer.state_dict())
    return model, sampler, history, train_cfg


def fit_base_model(x: torch.Tensor, model_cfg: ModelConfig, config: AugmentConfig, seed: int,
                   on_step: Callable[[int, int], None] | None = None,
                   checkpoints: ClassCheckpoints | None = None) -> dict[str, torch.Tensor]:
    """model_scope "transfer": an unconditional model trained on the train scans of every class
    (``x``) for the plain-ELBO part of the budget (``pretrain_steps``, no chains), so that the
    majority teaches anatomy; each minority class's model then starts from its weights
    (``fit_class_model(..., init=...)``). Returns its state dict."""
    plain = config.model_copy(update={"mcmc_steps": 0, "sampler": SamplerConfig(kind="none")})
    model, *_ = fit_class_model(x, model_cfg, plain, seed, on_step, checkpoints, BASE_KEY)
    return model.state_dict()


def fit_transfer_model(x_every: torch.Tensor, x_class: torch.Tensor, model_cfg: ModelConfig,
                       config: AugmentConfig, seed: int):
    """model_scope "transfer" for one class, without checkpoints: the base model on ``x_every``,
    then the class model on ``x_class`` from its weights. Returns what ``fit_class_model`` does.
    (``fit_models`` calls the two steps itself: one base model serves every minority class.)"""
    base = fit_base_model(x_every, model_cfg, config, seed)
    return fit_class_model(x_class, model_cfg, config, seed, init=base)


def learned_spread(model, x: torch.Tensor) -> dict[str, Any] | None:
    """``report.subject_spread`` of ``model`` on a class's training scans ``x``: its
    reconstructions of them against the scans themselves."""
    return subject_spread(x, reconstruct(model, x))


def fit_learning_subjects(fit: Callable[[int, int], Any], spreads: Callable[[Any], dict[str, dict | None]],
                          retrains: int, seed: int, on_retrain: Callable[[int, dict[str, dict]], None]):
    """Train with ``fit(seed, attempt)``; while ``spreads(trained)`` (label -> report.subject_spread)
    warns for a class and retrains are left, train again from seed + attempt x RETRAIN_SEED_STEP
    (``on_retrain(attempt, warned)`` first). Returns (trained, attempts made after the first,
    the last spreads). A model stuck on the class-mean plateau draws near-identical scans; a fresh
    seed usually leaves it (docs/RESULTS.md, session 8)."""
    attempt = 0
    while True:
        trained = fit(seed + attempt * RETRAIN_SEED_STEP, attempt)
        found = spreads(trained)
        warned = {label: s for label, s in found.items() if s is not None and s["warning"]}
        if not warned or attempt == retrains:
            return trained, attempt, found
        attempt += 1
        on_retrain(attempt, warned)


def _retrain_checkpoints(checkpoints: ClassCheckpoints | None, attempt: int) -> ClassCheckpoints | None:
    """Checkpoints of a retrained model: a series of its own per attempt (key ``label~retrainK``),
    so a resumed job finds the failed attempt complete and the retrain where it stopped."""
    if checkpoints is None or attempt == 0:
        return checkpoints
    suffix = f"{RETRAIN_KEY}{attempt}"
    return ClassCheckpoints(checkpoints.every, save=lambda key, state: checkpoints.save(key + suffix, state),
                            load=lambda key: checkpoints.load(key + suffix))


def _training_steps(req: FitRequest, stage: str, stopped: str, start: float, end: float,
                    attempt: int = 0) -> Callable[[int, int], None]:
    """The ``on_step`` of one training: stop when asked (``stopped`` names what was cancelled) and
    move the job's progress from ``start`` to ``end`` under ``stage``. A retrain (``attempt`` > 0)
    holds the progress at ``end``, where the first training left it, and counts in its stage in
    whole tens of percent, so a log gets about ten lines, not one per step."""
    def on_step(done: int, total: int) -> None:
        if req.should_stop is not None and req.should_stop():
            raise TrainingCancelled(f"cancelled while training {stopped}")
        if attempt:
            req.report(f"re{stage} ({10 * (10 * done // max(total, 1))}%)", end)
        else:
            req.report(stage, start + (end - start) * done / max(total, 1))
    return on_step


def _retrain_note(req: FitRequest, what: str) -> Callable[[int, dict[str, dict]], None]:
    """The ``on_retrain`` of ``fit_learning_subjects``: a note on why ``what`` was trained again."""
    def note(attempt: int, warned: dict[str, dict]) -> None:
        spread = ", ".join(f"{label} {s['ratio']:.2f}" for label, s in warned.items())
        if req.notes is not None:
            req.notes.append(
                f"{what} reconstructed the training scans of {', '.join(warned)} nearly alike (subject spread "
                f"{spread}): it had learned the class mean, not the subjects; trained again from a fresh seed "
                f"(retrain {attempt} of {req.config.retrains})")
    return note


def fit_shared(req: FitRequest) -> Iterator[ClassModel]:
    """``model_scope: shared``: one class-conditional model on the train scans of every class,
    resumed from and checkpointed under ``"shared"``, trained again while it reconstructs the
    scans of a requested class nearly alike; it takes the job's progress from 0.05 to 0.55."""
    if not req.classes:
        return
    config = req.config
    scans = {c: req.x[req.rows_of(c)] for c in sorted(set(req.labels))}
    scans = {c: v for c, v in scans.items() if len(v)}

    def fit(seed: int, attempt: int) -> SharedModel:
        on_step = _training_steps(req, "training shared model", "the shared model", 0.05, 0.55, attempt)
        return fit_shared_model(scans, req.model_cfg, config, seed, on_step,
                                _retrain_checkpoints(req.checkpoints, attempt))

    def spreads(shared: SharedModel) -> dict[str, dict | None]:
        return {c: learned_spread(class_view(shared, c), scans[c]) for c in req.classes if c in scans}

    started = time.perf_counter()
    shared, retrained, found = fit_learning_subjects(fit, spreads, config.retrains, config.seed * SEED_STEP,
                                                     _retrain_note(req, "the shared model"))
    seconds = time.perf_counter() - started
    model_dir = save(req.staging / "models" / SHARED_KEY, shared.model, shared.sampler, {
        "classes": shared.classes, "job_id": req.job_id, "seed": shared.train_cfg.seed,
        "preprocess": req.pre.model_dump(mode="json"), "train": shared.train_cfg.model_dump(mode="json"),
        "history": shared.history.as_dicts(), "trained_on": [req.sources[i] for i in req.train_idx],
        **training_sharpness(scans)})
    span = 0.4 / len(req.classes)
    for k, label in enumerate(req.classes):
        # it learned every class: this class's scans first, so the summary can list them
        learned_from = req.rows_of(label) + [i for i in req.train_idx if req.labels[i] != label]
        yield ClassModel(label, class_view(shared, label), shared, shared.history, seconds, SHARED_KEY, model_dir,
                         f"{req.job_id}/{SHARED_KEY}", config.seed * SEED_STEP + k, retrained, found.get(label),
                         learned_from, None, (0.55 + k * span, span))


def fit_per_class(req: FitRequest) -> Iterator[ClassModel]:
    """``model_scope: per_class``: one model per class on its own train scans; the classes share
    the job's progress from 0.05 to 0.95."""
    span = 0.9 / max(len(req.classes), 1)
    for k, label in enumerate(req.classes):
        yield _fit_one_class(req, k, label, None, (0.05 + k * span, span))


def fit_transfer(req: FitRequest) -> Iterator[ClassModel]:
    """``model_scope: transfer``: the base model on the train scans of every class (progress 0.05
    to 0.55), resumed from and checkpointed under ``BASE_KEY``, then one model per class from its
    weights (0.55 to 0.95)."""
    if not req.classes:
        return
    on_step = _training_steps(req, "training base model", "the base model", 0.05, 0.55)
    base_state = fit_base_model(req.x[req.train_idx], req.model_cfg, req.config, req.config.seed * SEED_STEP,
                                on_step, req.checkpoints)
    span = 0.4 / len(req.classes)
    for k, label in enumerate(req.classes):
        yield _fit_one_class(req, k, label, base_state, (0.55 + k * span, span))


def _fit_one_class(req: FitRequest, k: int, label: str, base_state: dict[str, torch.Tensor] | None,
                   progress: tuple[float, float]) -> ClassModel:
    """The model of the ``k``-th requested class on its own train scans (from ``base_state``'s
    weights when given), resumed from and checkpointed under its label; its training takes the
    first 80% of the class's share of the progress."""
    config, picked = req.config, req.rows_of(label)
    train_x = req.x[picked]
    start, span = progress

    def fit(seed: int, attempt: int):
        step = _training_steps(req, f"training {label}", f"class '{label}'", start, start + 0.8 * span, attempt)
        return fit_class_model(train_x, req.model_cfg, config, seed, step,
                               checkpoints=_retrain_checkpoints(req.checkpoints, attempt), label=label,
                               init=base_state)

    started = time.perf_counter()
    (model, sampler, history, train_cfg), retrained, spreads = fit_learning_subjects(
        fit, lambda fitted: {label: learned_spread(fitted[0], train_x)}, config.retrains,
        config.seed * SEED_STEP + k, _retrain_note(req, f"the model of class {label}"))
    seconds = time.perf_counter() - started
    base = {"base_trained_on": [req.sources[i] for i in req.train_idx]} if base_state is not None else {}
    model_dir = save(req.staging / "models" / label, model, sampler, {
        "class": label, "job_id": req.job_id, "seed": train_cfg.seed, "preprocess": req.pre.model_dump(mode="json"),
        "train": train_cfg.model_dump(mode="json"), "history": history.as_dicts(),
        "trained_on": [req.sources[i] for i in picked], **base, **training_sharpness({label: train_x})})
    # the seed of the model kept (a retrained one's own)
    return ClassModel(label, model, None, history, seconds, label, model_dir, f"{req.job_id}/{label}",
                      train_cfg.seed, retrained, spreads.get(label), picked,
                      len(req.train_idx) if base_state is not None else None, progress)


FITTERS: dict[str, Callable[[FitRequest], Iterator[ClassModel]]] = {
    "shared": fit_shared,
    "transfer": fit_transfer,
    "per_class": fit_per_class,
}


def fit_models(req: FitRequest) -> Iterator[ClassModel]:
    """One fitted model per class of ``req.classes``, in order, by the fitter of
    ``req.config.model_scope`` (``FITTERS``); a per-class fitter trains each when it is asked for."""
    fitter = FITTERS.get(req.config.model_scope)
    if fitter is None:
        raise ValueError(f"model_scope: {req.config.model_scope!r} is not one of {', '.join(FITTERS)}")
    return fitter(req)
