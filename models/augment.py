"""Cohort in, balanced cohort out: the augmentation pipeline used by the CLI and the workers.

For each class that needs synthetic scans: preprocess its scans (MONAI chain, cached), train an
MCMC-refined VAE on them, sample as many scans as the target asks, and write them as NIfTI in
the preprocessing's target space with a JSON sidecar. Then a manifest of real and synthetic
scans and a report (montages, training curves, memorisation audit, metrics).

Everything is written into a staging folder beside ``out_dir`` that is renamed into place only
when complete, so a failure (bad scan, cancellation, crash) leaves no partial output behind.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .checkpoint import save
from .config import ModelConfig, SamplerConfig, TrainConfig
from .data import Cohort, CohortError, PreprocessConfig, load_tensors, read_cohort, target_affine, write_scan
from .report import memorisation_audit, slice_montage, training_curves
from .samplers import build_sampler
from .targets import MAX_SYNTHETIC_PER_CLASS, synthetic_counts
from .training import Trainer, TrainingCancelled
from .vae import build_model

Progress = Callable[[str, float], None]  # (stage, fraction of the whole job done)


class ModelChoice(BaseModel):
    """The parts of ModelConfig a user chooses; data_shape comes from preprocessing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arch: str = "conv"
    latent_dims: list[int] = Field(default_factory=lambda: [16])
    likelihood: str = "gaussian"
    parameterization: str = "noncentered"
    channels: tuple[int, ...] = (8, 16, 32)
    latent_channels: tuple[int, ...] = ()  # arch "hconv": spatial latent maps (models/hierarchy.py)
    hidden: tuple[int, ...] = (256,)
    obs_log_var: float = -4.0
    sampling: Literal["prior", "aggregate"] = "aggregate"


class AugmentConfig(BaseModel):
    """How to preprocess, model, train and sample.

    Minority classes are small, so the training budget is counted in optimiser steps
    (``pretrain_steps`` of plain ELBO, then ``mcmc_steps`` with chains) and turned into
    epochs per class; ``train`` supplies the rest (batch size, learning rates, device).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    preprocess: PreprocessConfig | None = None  # None: defaults for the cohort's 2-D/3-D kind
    model: ModelChoice = ModelChoice()
    sampler: SamplerConfig = SamplerConfig(kind="mala", adaptation="entropy", preconditioner="diag", n_steps=5)
    train: TrainConfig = TrainConfig(batch_size=8, lr=2e-3)
    pretrain_steps: int = Field(600, ge=0)
    mcmc_steps: int = Field(150, ge=0)
    seed: int = 0
    max_per_class: int = Field(MAX_SYNTHETIC_PER_CLASS, ge=1)


@dataclass
class ClassCheckpoints:
    """Where a caller keeps training state per class, so that a rerun of a stopped augmentation
    resumes each class model from its last checkpoint instead of from scratch (the workers store
    them as artifacts). ``load(label)`` returns the last saved Trainer state or None."""

    every: int
    save: Callable[[str, dict[str, Any]], None]
    load: Callable[[str], dict[str, Any] | None]

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"checkpoints.every: must be a positive number of steps, got {self.every}")


@dataclass
class AugmentResult:
    out_dir: Path
    manifest: Path
    real_counts: dict[str, int]
    synthetic_counts: dict[str, int]
    models: dict[str, Path] = field(default_factory=dict)
    report: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class Cancelled(Exception):
    """The caller asked to stop; nothing was written to out_dir."""


def _staging_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))


def augment(
    cohort: Cohort | str | Path,
    out_dir: str | Path,
    target: str | float | dict[str, int] = "balance",
    config: AugmentConfig | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    cache_dir: str | Path | None = None,
    job_id: str | None = None,
    checkpoints: ClassCheckpoints | None = None,
) -> AugmentResult:
    config = config or AugmentConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CohortError(f"{out_dir}: output folder exists and is not empty; choose another")
    report = progress or (lambda stage, fraction: None)
    job_id = job_id or uuid.uuid4().hex[:12]

    report("validating", 0.0)
    cohort = cohort if isinstance(cohort, Cohort) else read_cohort(cohort)
    wanted = synthetic_counts(cohort.counts, target, config.max_per_class)
    pre = config.preprocess or PreprocessConfig(spatial_dims=cohort.spatial_dims)
    staging = _staging_dir(out_dir)
    cache = Path(cache_dir) if cache_dir else staging / ".cache"
    try:
        # Every scan is read (and so validated) before any training starts.
        real = {label: load_tensors(cohort, pre, cache, label) for label in cohort.classes}
        report("validating", 0.05)
        result = _generate(cohort, real, wanted, pre, config, staging, report, should_stop, job_id, checkpoints)
        if cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
        report("packaging", 0.97)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = _relocate(result, staging, out_dir)
    report("done", 1.0)
    return result


def _relocate(result: AugmentResult, old: Path, new: Path) -> AugmentResult:
    moved = lambda p: new / p.relative_to(old) if p else p  # noqa: E731
    result.out_dir, result.manifest, result.report = new, moved(result.manifest), moved(result.report)
    result.models = {k: moved(v) for k, v in result.models.items()}
    return result


def sampler_label(cfg: SamplerConfig) -> str:
    """How a trained model's chains were tuned, for sidecars: "mala-entropy-diag", "none"."""
    return "none" if cfg.kind == "none" else f"{cfg.kind}-{cfg.adaptation}-{cfg.preconditioner}"


def fit_class_model(x: torch.Tensor, model_cfg: ModelConfig, config: AugmentConfig, seed: int,
                    on_step: Callable[[int, int], None] | None = None,
                    checkpoints: ClassCheckpoints | None = None, label: str = ""):
    """Train one model on one class's scans with the step budget of ``config``; with
    ``checkpoints``, resume from the class's last saved state and save as it goes (and at the end).

    Returns (model, sampler, history, the TrainConfig used).
    """
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    sampler = build_sampler(config.sampler, model.latent_dim)
    batch = min(config.train.batch_size, len(x))
    steps_per_epoch = -(-len(x) // batch)
    train_cfg = config.train.model_copy(update={
        "seed": seed, "batch_size": batch,
        "pretrain_epochs": -(-config.pretrain_steps // steps_per_epoch),
        "epochs": -(-config.mcmc_steps // steps_per_epoch)})
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


def write_synthetic(model, n: int, out_dir: Path, label: str, affine, seed: int, model_id: str,
                    job_id: str | None = None, sampler_name: str = "", batch: int = 32,
                    on_batch: Callable[[int], None] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Sample n scans (in batches), write each as NIfTI plus a JSON sidecar; return scans and names."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    scans, names = [], []
    for start in range(0, n, batch):
        chunk = model.sample(min(batch, n - start), generator=gen).cpu()
        for i, scan in enumerate(chunk, start):
            name = f"syn_{label}_{i:05d}.nii.gz"
            path = write_scan(out_dir / name, scan[0].numpy(), affine)
            sidecar = {"synthetic": True, "class": label, "model_id": model_id, "job_id": job_id,
                       "seed": seed, "index": i, "sampler": sampler_name,
                       "latent_source": model.cfg.sampling if model.sampling_fitted else "prior",
                       "shape": list(scan.shape[1:]), "affine": [list(map(float, r)) for r in affine]}
            path.with_name(name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar, indent=2))
            names.append(name)
        scans.append(chunk)
        if on_batch is not None:
            on_batch(len(names))
    return (torch.cat(scans) if scans else torch.empty(0, *model.cfg.data_shape)), names


def _generate(cohort, real, wanted, pre, config, staging, report, should_stop, job_id,
              checkpoints: ClassCheckpoints | None) -> AugmentResult:
    affine = target_affine(pre)
    classes = [c for c, n in wanted.items() if n > 0]
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
    manifest_rows = [{"path": str(item.path.resolve()), "label": item.label, "split": item.split or "",
                      "synthetic": "false"} for item in cohort]
    metrics: dict[str, Any] = {"job_id": job_id, "real_counts": cohort.counts, "synthetic_counts": wanted,
                               "classes": {}}
    models: dict[str, Path] = {}
    span = 0.9 / max(len(classes), 1)
    for k, label in enumerate(classes):
        base = 0.05 + k * span
        x = real[label]
        seed = config.seed * 1009 + k

        def on_step(done: int, total: int, base=base, label=label) -> None:
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"cancelled while training class '{label}'")
            report(f"training {label}", base + 0.8 * span * done / max(total, 1))

        started = time.perf_counter()
        try:
            model, sampler, history, train_cfg = fit_class_model(x, model_cfg, config, seed, on_step,
                                                                 checkpoints=checkpoints, label=label)
        except TrainingCancelled as stop:
            raise Cancelled(str(stop)) from None
        train_seconds = time.perf_counter() - started
        model_dir = save(staging / "models" / label, model, sampler, {
            "class": label, "job_id": job_id, "seed": seed, "preprocess": pre.model_dump(mode="json"),
            "train": train_cfg.model_dump(mode="json"), "history": history.as_dicts()})
        models[label] = model_dir

        report(f"sampling {label}", base + 0.8 * span)
        synthetic, names = write_synthetic(model, wanted[label], staging / "synthetic" / label, label, affine,
                                           seed=seed + 1, model_id=f"{job_id}/{label}", job_id=job_id,
                                           sampler_name=sampler_label(config.sampler))
        manifest_rows += [{"path": f"synthetic/{label}/{name}", "label": label, "split": "",
                           "synthetic": "true"} for name in names]

        report(f"report {label}", base + 0.9 * span)
        audit = memorisation_audit(x, synthetic)
        slice_montage([s[0].numpy() for s in x], [s[0].numpy() for s in synthetic],
                      staging / "report" / f"montage_{label}.png", f"class {label}: real (top) vs synthetic")
        training_curves(history.as_dicts(), staging / "report" / f"curves_{label}.png", f"class {label}")
        last = history.records[-1] if history.records else None
        metrics["classes"][label] = {
            "n_real": len(x), "n_synthetic": int(wanted[label]), "train_seconds": round(train_seconds, 2),
            "final_elbo": last.elbo if last else None, "final_accept": last.accept if last else None,
            "memorisation": {k: v for k, v in audit.items() if k != "synthetic_nn"},
        }

    manifest = staging / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split", "synthetic"])
        writer.writeheader()
        writer.writerows(manifest_rows)
    (staging / "report").mkdir(exist_ok=True)
    final_counts = {c: cohort.counts[c] + wanted[c] for c in cohort.classes}
    metrics["final_counts"] = final_counts
    (staging / "report" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return AugmentResult(staging, manifest, cohort.counts, wanted, models, staging / "report", metrics)
