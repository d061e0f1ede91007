"""What each job kind does: a thin layer from job params to library calls and artifacts.

Handlers take a ``JobContext`` and validated params and return an ``Outcome``. They import the
library (torch, MONAI) inside the function, so the gateway can import ``workers`` without it.
Every artifact id a handler writes is derived from the job id, so a re-run of the same job
(after a lost worker) replaces its own output instead of adding a second copy.
"""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import sources
from .artifacts import ID_PATTERN, ArtifactNotFound
from .checkpoints import Checkpoints
from .context import JobCancelled, JobContext, Outcome, json_safe
from .db import session
from .params import (
    AugmentParams,
    EvaluateParams,
    IngestParams,
    InvalidParams,
    SampleParams,
    TrainParams,
    check_budget,
    describe,
)
from .records import JobRecord

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


def library_config(cls: type[BaseModel], values: dict[str, Any], field: str):
    """Build a library config; its errors name the job field they came from ('model.hidden: ...')."""
    try:
        return cls(**values)
    except ValidationError as err:
        raise InvalidParams(describe(err, field)) from None
    except TypeError as err:
        raise InvalidParams(f"{field}: {err}") from None


def _dataset_path(ctx: JobContext, dataset_id: str) -> Path:
    try:
        return ctx.store.path(dataset_id)
    except ArtifactNotFound:
        raise InvalidParams(f"dataset: no dataset {dataset_id!r} (ingest it first)") from None


def _model_path(ctx: JobContext, model_id: str) -> Path:
    try:
        return ctx.store.path(model_id)
    except ArtifactNotFound:
        raise InvalidParams(f"model: no model {model_id!r}") from None


# -- ingest --------------------------------------------------------------------------------------
def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _extract(archive: Path, dest: Path) -> Path:
    """Unpack an upload safely (no absolute paths, no '..', no links) and find the cohort root."""
    dest.mkdir(parents=True)
    name = archive.name.lower()
    try:
        packed = archive.stat().st_size
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.infolist():
                    target = (dest / member.filename).resolve()
                    if not target.is_relative_to(dest.resolve()):
                        raise InvalidParams(f"source: archive member {member.filename!r} escapes the archive")
                    if sources.is_bomb(member.file_size, member.compress_size):
                        raise InvalidParams(f"source: archive member {member.filename!r} would unpack "
                                            f"{member.file_size} bytes from {member.compress_size}: a bomb")
                if sources.is_bomb(sum(m.file_size for m in zf.infolist()), packed):
                    raise InvalidParams(f"source: {archive.name} would unpack to over "
                                        f"{sources.MAX_COMPRESSION_RATIO:g} times its size: a bomb")
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                if sources.is_bomb(sum(m.size for m in tf.getmembers()), packed):  # headers only
                    raise InvalidParams(f"source: {archive.name} would unpack to over "
                                        f"{sources.MAX_COMPRESSION_RATIO:g} times its size: a bomb")
                tf.extractall(dest, filter="data")  # refuses links out, absolute paths, devices
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise InvalidParams(f"source: {archive.name} is not a readable archive ({err})") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    # A zip of a folder holds that folder: the cohort is one level down.
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def _owner(ctx: JobContext) -> str | None:
    """Who submitted the job; None for an in-process run (tests, the CLI: the operator's own)."""
    if not getattr(ctx, "token", None):  # only a recorded run (runner.RecordedContext) has one
        return None
    with session(ctx.settings.database) as s:
        rec = s.get(JobRecord, ctx.job_id)
        return rec.owner if rec is not None else None


def _source_path(ctx: JobContext, source: str, scratch: Path) -> tuple[Path, bool]:
    """The cohort to read, and whether it came from an upload (an archive: confined to itself)."""
    if ID_PATTERN.match(source):
        try:
            path = ctx.store.path(source)
        except ArtifactNotFound:
            raise InvalidParams(f"source: no artifact {source!r}") from None
        uploaded = True
    else:
        path = Path(source).expanduser()
        sources.check_server_path(path, ctx.settings, _owner(ctx))
        if not path.exists():
            raise InvalidParams(f"source: {source}: no such file or folder on the worker")
        uploaded = False
    if _is_archive(path):
        return _extract(path, scratch / "extracted"), True
    return path, uploaded


def _read_source(ctx: JobContext, source: str, scratch: Path):
    """List the cohort, reading nothing outside where this job may read (workers/sources.py)."""
    from models.data import read_cohort

    root, confined = _source_path(ctx, source, scratch)
    if confined:
        sources.confine(root)  # before listing: not even the existence of an outside path leaks
    cohort = read_cohort(root)
    paths = [item.path for item in cohort]
    if confined:
        sources.confine_items(paths, root)
    else:
        sources.check_server_items(paths, ctx.settings)
    return cohort


def ingest(ctx: JobContext, p: IngestParams) -> Outcome:
    try:
        return _ingest(ctx, p)
    except (ValueError, ArtifactNotFound):
        # Bad input fails the job for good: the gateway's copy of the upload is of no further
        # use, and removing it here keeps that work off the gateway's requests.
        if p.source.startswith("dataset-upload-"):
            ctx.store.delete(p.source)
        raise


def _ingest(ctx: JobContext, p: IngestParams) -> Outcome:
    from models.data import read_cohort, summarize

    ctx.progress(0.0, "reading")
    with ctx.store.scratch() as scratch:
        cohort = _read_source(ctx, p.source, scratch)
        ctx.log(f"found {len(cohort)} scans in {len(cohort.classes)} classes")
        dataset_id = f"dataset-{ctx.job_id}"
        meta: dict[str, Any] = {"job": ctx.job_id, "name": p.name, "source": p.source}
        with ctx.store.writer("dataset", dataset_id, meta=meta, replace=True) as payload:
            # A self-contained copy: class folders plus a manifest with relative paths, whatever
            # the source looked like (folder tree, CSV with absolute paths, archive).
            rows, taken = [], set()
            for i, item in enumerate(cohort):
                ctx.check()
                if "/" in item.label or "\\" in item.label or item.label.startswith("."):
                    raise InvalidParams(f"source: class label {item.label!r} cannot be used as a folder name")
                name = item.path.name
                if (item.label, name) in taken:
                    name = f"{i:05d}_{name}"
                taken.add((item.label, name))
                target = payload / item.label / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if item.path.is_dir():  # a DICOM series
                    shutil.copytree(item.path, target)
                else:
                    shutil.copyfile(item.path, target)
                rows.append([f"{item.label}/{name}", item.label, item.split or ""])
                ctx.progress(0.5 * (i + 1) / len(cohort), "copying")
            with open(payload / "manifest.csv", "w", newline="") as fh:
                csv.writer(fh).writerows([["path", "label", "split"], *rows])
            ctx.progress(0.5, "validating scans")
            summary = summarize(read_cohort(payload))  # opens (and so validates) every scan
            summary["source"] = p.name or p.source
            meta["summary"] = json_safe(summary)
        for warning in summary["warnings"]:
            ctx.log(warning, "warning")
    # The gateway's copy of an upload has served its purpose once the dataset holds its own.
    upload_copy = [p.source] if p.source.startswith("dataset-upload-") else []
    return Outcome(metrics={"summary": json_safe(summary)}, artifacts=[dataset_id], obsolete=upload_copy,
                   message=f"ingested {summary['n_scans']} scans: " +
                           ", ".join(f"{c} {n}" for c, n in summary["classes"].items()))


# -- train ---------------------------------------------------------------------------------------
def train(ctx: JobContext, p: TrainParams) -> Outcome:
    import torch

    from models import (
        ModelConfig,
        SamplerConfig,
        TrainConfig,
        Trainer,
        TrainingCancelled,
        build_model,
        build_sampler,
        save,
    )
    from models.checks import ALL_CLASSES, training_sharpness
    from models.data import PreprocessConfig, load_tensors, read_cohort, settle_preprocess

    ctx.progress(0.0, "validating")
    preprocess = library_config(PreprocessConfig, p.preprocess, "preprocess")
    sampler_cfg = library_config(SamplerConfig, p.sampler, "sampler")
    train_cfg = library_config(TrainConfig, {**p.train, "device": ctx.device}, "train")
    cohort = None
    if preprocess.target_shape is None or (preprocess.intensity_scale == "cohort" and preprocess.intensity_range is None):
        # 2-D defaults: the native size and one intensity range, both from the cohort
        cohort = read_cohort(_dataset_path(ctx, p.dataset))
        preprocess = settle_preprocess(preprocess, cohort)
    expected_shape = (1, *preprocess.target_shape)
    model_cfg = library_config(ModelConfig, {"data_shape": expected_shape, **p.model}, "model")

    ctx.progress(0.0, "loading data")
    cohort = read_cohort(_dataset_path(ctx, p.dataset)) if cohort is None else cohort
    data = load_tensors(cohort, preprocess, ctx.cache_dir(p.dataset), label=p.label)
    if tuple(data.shape[1:]) != tuple(model_cfg.data_shape):
        raise InvalidParams(f"model.data_shape: {tuple(model_cfg.data_shape)} does not match the "
                            f"preprocessed scans {tuple(data.shape[1:])}")
    check_budget(p, ctx.settings, n_scans=len(data))  # steps per epoch are known now
    ctx.log(f"training on {len(data)} scans of shape {tuple(data.shape[1:])}"
            + (f" (class {p.label})" if p.label else ""))

    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg)
    sampler = build_sampler(sampler_cfg, model.latent_dim)
    trainer = Trainer(model, sampler, data, train_cfg)
    checkpoints = Checkpoints(ctx.store, ctx.job_id)
    resumed_from = None
    latest = checkpoints.latest()
    if latest is not None:
        trainer.load_state_dict(checkpoints.load(latest, ctx.device))
        resumed_from = trainer.global_step
        ctx.log(f"resumed from step {resumed_from} of {trainer.total_steps}")
    every = p.checkpoint_every or ctx.settings.checkpoint_every
    started = time.perf_counter()

    def on_step(done: int, total: int) -> None:
        if ctx.should_stop():
            raise TrainingCancelled()
        ctx.progress(0.02 + 0.93 * done / max(total, 1), "training")

    def on_checkpoint(state: dict[str, Any]) -> None:
        checkpoints.save(state)
        ctx.log(f"checkpoint at step {state['global_step']}")

    def on_epoch(record) -> None:
        ctx.log(f"epoch {record.epoch}/{trainer.total_epochs}: loss {record.loss:.4g}"
                + (f", accept {record.accept:.3f}" if record.accept is not None else ""))
        ctx.update_metrics(epoch=record.epoch, step=trainer.global_step, last=record.as_dict())

    ctx.progress(0.02, "training", force=True)
    try:
        history = trainer.fit(callback=on_epoch, on_step=on_step, checkpoint_every=every,
                              on_checkpoint=on_checkpoint)
    except TrainingCancelled:
        kept = checkpoints.ids()
        where = f"last checkpoint at step {Checkpoints.step_of(kept[-1])}" if kept else "no checkpoint yet"
        raise JobCancelled(f"stopped at step {trainer.global_step}; {where}") from None

    ctx.progress(0.96, "saving model", force=True)
    model_id = f"model-{ctx.job_id}"
    last = history.records[-1].as_dict() if history.records else {}
    meta = json_safe({"job": ctx.job_id, "dataset": p.dataset, "label": p.label,
                      "preprocess": preprocess.model_dump(mode="json"),
                      "train": train_cfg.model_dump(mode="json"), "final": last,
                      **training_sharpness({p.label or ALL_CLASSES: data})})
    with ctx.store.writer("model", model_id, meta=meta, replace=True) as payload:
        save(payload, model, sampler, meta)
    metrics = {"steps": trainer.global_step, "epochs": len(history.records), "final": last,
               "history": history.as_dicts(), "resumed_from": resumed_from,
               "n_items": len(data), "seconds": round(time.perf_counter() - started, 3)}
    return Outcome(metrics=metrics, artifacts=[model_id], obsolete=checkpoints.ids(),  # superseded
                   message=f"trained {trainer.global_step} steps; final loss {last.get('loss', float('nan')):.4g}")


# -- sample ----------------------------------------------------------------------------------------
def sample(ctx: JobContext, p: SampleParams) -> Outcome:
    import numpy as np

    from models import load
    from models.augment import sampler_label, write_synthetic
    from models.checks import ALL_CLASSES, sample_warning, sampled_sharpness
    from models.conditional import ClassView, for_class
    from models.data import PreprocessConfig, output_format, target_affine

    ctx.progress(0.0, "loading model")
    model, sampler, meta = load(_model_path(ctx, p.model), device=ctx.device)
    try:  # the gateway checked this at submit where it could; this is the authoritative check
        model, label = for_class(model, meta, p.label, "label")
    except ValueError as err:
        raise InvalidParams(str(err)) from None
    label = label or ALL_CLASSES  # a model of every class (the key its energy is kept under)
    # Without a recorded preprocessing (a model trained on tensors) there is no scanner space.
    # A model of a PNG cohort delivers PNGs (its settled preprocessing says so; models.data.settle).
    pre = PreprocessConfig(**meta["preprocess"]) if meta.get("preprocess") else None
    affine = output_format(pre, target_affine(pre)) if pre else np.eye(4)

    def on_batch(done: int) -> None:
        ctx.check()
        ctx.progress(0.9 * done / p.n, "sampling")

    output_id = f"output-{ctx.job_id}"
    with ctx.store.writer("output", output_id, replace=True,
                          meta={"job": ctx.job_id, "model": p.model, "n": p.n, "seed": p.seed,
                                "label": label}) as out:
        scans, names = write_synthetic(model, p.n, out / "scans", label, affine, seed=p.seed,
                                       model_id=p.model, job_id=ctx.job_id, sampler_name=sampler_label(sampler.cfg),
                                       batch=p.batch_size, on_batch=on_batch)
        np.save(out / "samples.npy", scans.numpy())
        with open(out / "manifest.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["path", "label", "split", "synthetic"],
                                      *[[f"scans/{name}", label, "", "true"] for name in names]])
    of_class = f" of class '{label}'" if p.label or isinstance(model, ClassView) else ""
    # A sample job has no real scans: its sharpness is measured against the energy the model
    # recorded of its training scans, and a blur tell is said in the job's events and message.
    sharp = sampled_sharpness(meta, label, scans)
    message = f"sampled {p.n} scans{of_class}"
    if sharp and sharp["warning"]:
        warning = sample_warning(label, sharp)
        ctx.log(f"warning: {warning}")
        message += f"; warning: {warning}"
    return Outcome(metrics={"n": p.n, "label": label, "shape": list(scans.shape[1:]),
                            "mean": float(scans.mean()), "sharpness": sharp},
                   artifacts=[output_id], message=message)


# -- evaluate --------------------------------------------------------------------------------------
def evaluate(ctx: JobContext, p: EvaluateParams) -> Outcome:
    import torch

    from models import bits_per_dim, load, log_likelihood
    from models.data import Cohort, PreprocessConfig, load_tensors, read_cohort

    ctx.progress(0.0, "loading model")
    model, sampler, meta = load(_model_path(ctx, p.model), device=ctx.device)
    if not meta.get("preprocess"):
        raise InvalidParams("model: records no preprocessing (not made by a train job); cannot read scans for it")
    preprocess = PreprocessConfig(**meta["preprocess"])
    label = p.label or meta.get("label")
    cohort = read_cohort(_dataset_path(ctx, p.dataset))
    splits = {item.split for item in cohort}
    split = p.split or ("test" if "test" in splits else None)
    if split is not None:
        if split not in splits:
            raise InvalidParams(f"split: dataset has no split {split!r}")
        cohort = Cohort([i for i in cohort if i.split == split], cohort.source, cohort.notes)
    ctx.progress(0.05, "loading data")
    x = load_tensors(cohort, preprocess, ctx.cache_dir(p.dataset), label=label)[: p.max_items].to(ctx.device)

    generator = torch.Generator(device=ctx.device).manual_seed(p.seed)
    values = []
    batch = 16
    for start in range(0, len(x), batch):
        ctx.check()
        values.append(log_likelihood(model, x[start:start + batch], n_particles=p.n_particles,
                                     proposal=p.proposal, sampler=sampler, generator=generator).cpu())
        ctx.progress(0.1 + 0.85 * min(len(x), start + batch) / len(x), "estimating log-likelihood")
    log_px = torch.cat(values)
    n_dims = int(torch.tensor(preprocess.target_shape).prod())
    metrics = {"label": label, "split": split, "n_items": len(x), "proposal": p.proposal,
               "n_particles": p.n_particles, "log_px": float(log_px.mean()),
               "log_px_std": float(log_px.std()) if len(x) > 1 else 0.0,
               "bits_per_dim": float(bits_per_dim(log_px.mean(), n_dims))}
    report_id = f"report-{ctx.job_id}"
    with ctx.store.writer("report", report_id, meta={"job": ctx.job_id, "model": p.model},
                          file="evaluation.json", replace=True) as out:
        (out / "evaluation.json").write_text(json.dumps(json_safe(metrics), indent=2))
    return Outcome(metrics=metrics, artifacts=[report_id],
                   message=f"log p(x) {metrics['log_px']:.2f} nats, {metrics['bits_per_dim']:.3f} bits/dim")


# -- augment ---------------------------------------------------------------------------------------
def augment(ctx: JobContext, p: AugmentParams) -> Outcome:
    from models.augment import (
        AugmentConfig,
        Cancelled,
        ClassCheckpoints,
        class_warnings,
        partial_line,
    )
    from models.augment import augment as run_augment
    from models.checks import utility_sentence
    from models.fitting import BASE_KEY, RETRAIN_KEY

    config = library_config(AugmentConfig, p.augment_config(), "config")  # with p.profile's settings
    # threads: this pool process's share (lifecycle._child_init); a training caps its own by its
    # minibatch's size (models/threads.py, Trainer.fit)
    config = config.model_copy(update={"train": config.train.model_copy(update={"device": ctx.device})})
    source = _dataset_path(ctx, p.dataset)
    output_id = f"output-{ctx.job_id}"
    meta: dict[str, Any] = {"job": ctx.job_id, "dataset": p.dataset, "target": p.target, "profile": p.profile}
    # One checkpoint series per class model (named by a digest: labels are free text), or one for
    # the shared model (key "shared"); a redelivered job resumes each model where it stopped, and
    # finished models are not retrained.
    resumed: dict[str, int] = {}

    def series(label: str) -> Checkpoints:
        return Checkpoints(ctx.store, f"{ctx.job_id}-{_digest(label)}")

    def load(label: str) -> dict[str, Any] | None:
        checkpoints = series(label)
        latest = checkpoints.latest()
        if latest is None:
            return None
        state = checkpoints.load(latest, ctx.device)
        resumed[label] = int(state["global_step"])
        # model_scope shared: one series for the shared model, saved under "shared"; transfer: the
        # base model's under models.fitting.BASE_KEY, then one per class; a model trained again
        # (config.retrains) has a series of its own, "<key>~retrainK" (models.fitting.RETRAIN_KEY)
        key, _, retrain = label.partition(RETRAIN_KEY)
        what = ("shared model" if config.model_scope == "shared" else
                "base model" if key == BASE_KEY else f"class {key}") + (f" (retrain {retrain})" if retrain else "")
        ctx.log(f"{what}: resumed from step {resumed[label]}")
        return state

    checkpoints = ClassCheckpoints(every=ctx.settings.checkpoint_every,
                                   save=lambda label, state: series(label).save(state), load=load)
    try:
        with ctx.store.writer("output", output_id, meta=meta, replace=True) as out:
            result = run_augment(
                source, out, target=p.target, config=config,
                progress=lambda stage, fraction: ctx.progress(0.95 * fraction, stage),
                should_stop=ctx.should_stop, cache_dir=ctx.cache_dir(p.dataset), job_id=ctx.job_id,
                checkpoints=checkpoints, source_paths="relative")  # no worker paths in the result
            meta["synthetic_counts"] = result.synthetic_counts
    except Cancelled as stop:
        raise JobCancelled(str(stop)) from None
    ctx.progress(0.96, "registering models", force=True)
    artifacts = [output_id]
    for i, (label, folder) in enumerate(sorted(result.models.items())):
        model_id = f"model-{ctx.job_id}-{i}"
        saved = ctx.store.path(output_id) / folder.relative_to(result.out_dir)
        # Registered as models of their own, so sample and evaluate jobs can use them.
        ctx.store.put_dir("model", saved, artifact_id=model_id, replace=True,
                          meta={"job": ctx.job_id, "label": label})
        artifacts.append(model_id)
    # real_counts: every real scan per class; train_counts: those the balance counts and the
    # generators learned from (the train split when the dataset has one).
    metrics = json_safe({**result.metrics, "synthetic_counts": result.synthetic_counts, "resumed_from": resumed,
                         "models": dict(zip(sorted(result.models), artifacts[1:]))})
    made = sum(result.synthetic_counts.values())
    if result.metrics.get("near_copies_replaced"):
        ctx.log(f"replaced {result.metrics['near_copies_replaced']} near-copies of training scans by new draws")
    for label, info in result.metrics.get("classes", {}).items():  # the CLI prints the same warnings
        utility = info.get("utility")
        if utility and utility.get("helped"):
            ctx.log(utility_sentence(label, utility))
        for warning in class_warnings(label, info):
            ctx.log(warning, "warning")
    obsolete = ctx.store.list("checkpoint", f"checkpoint-{ctx.job_id}-")  # superseded by the models
    short = partial_line(result.metrics)
    if short:  # the job ends "partial": a client can tell it from a balanced cohort by the state
        ctx.log(short, "warning")
    return Outcome(metrics=metrics, artifacts=artifacts, obsolete=obsolete, message=f"made {made} synthetic scans",
                   state="partial" if short else "succeeded")


def _digest(label: str) -> str:
    import hashlib

    return hashlib.sha256(label.encode()).hexdigest()[:10]


HANDLERS = {"ingest": ingest, "train": train, "sample": sample, "evaluate": evaluate, "augment": augment}
