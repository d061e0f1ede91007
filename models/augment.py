"""Cohort in, balanced cohort out: the augmentation pipeline used by the CLI and the workers.

The output is one cohort in one space, self-contained (every manifest row resolves inside it)::

    manifest.csv             path,label,split,synthetic,source_path (paths relative to this folder)
    real/<class>/*.nii.gz    every real scan, preprocessed: the synthetic scans' grid, affine,
                             orientation and [0, 1] intensity scale, header free text cleared
                             (``real_scans="raw"``: byte copies of the inputs instead); a
                             PNG/JPEG cohort gets PNGs at its bit depth and orientation instead
    synthetic/<class>/       syn_<class>_00000.nii.gz (.png likewise) + .json sidecar (model, seed, ...)
    report/                  summary.txt, metrics.json, montage_<class>.png, curves_<class>.png
    models/<class>/          the trained model of each class that got synthetic scans
                             (``model_scope: shared``: models/shared/, the one model of every class)

Steps: read the cohort (an mcvae output manifest too: its synthetic rows are left out); check
every scan (quality control, ``models.data.quality``) before anything is trained; write the real
scans; fit the model(s) the classes that need synthetic scans are drawn from, on the ``train``
rows only (every row when the cohort has no split): one fitter per ``model_scope``, in
``models/fitting.py``; per class, draw scans (one strategy per ``generator``, in
``models/generators.py``, near-copies of training scans redrawn), audit them, write them and
report; then the classifier checks (``models/checks.py``), the manifest and report/.

Everything is written into a staging folder beside ``out_dir`` that is renamed into place only
when complete, so a failure (bad scan, cancellation, crash) leaves no partial output behind.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .checks import ClassifierChecks, sharpness_warning, utility_sentence
from .config import SamplerConfig
from .data import (
    Cohort,
    CohortError,
    PreprocessConfig,
    load_scan,
    load_tensors,
    read_cohort,
    target_affine,
)
from .data.advice import setting
from .data.io import share_like_umask
from .data.quality import preprocessed_problem, raw_problem, refuse
from .data.settle import OutputFormat, output_format, settle_preprocess
from .fitting import ClassCheckpoints, FitRequest, Progress, fit_models
from .generators import VALUE_RANGE, DrawRequest, draw
from .options import AugmentConfig, ModelChoice
from .report import (
    DUPLICATE_FRACTION,
    duplicate_pairs,
    memorisation_audit,
    real_nearest,
    rms,
    slice_montage,
    synthetic_diversity,
    training_curves,
)
from .targets import synthetic_counts
from .threads import spare_threads
from .training import TrainingCancelled

__all__ = ["AugmentConfig", "AugmentResult", "Cancelled", "ClassCheckpoints", "ModelChoice", "Progress", "augment",
           "write_synthetic"]

MANIFEST_COLUMNS = ["path", "label", "split", "synthetic", "source_path"]
TRAIN = "train"
SCAN_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", ".png", ".jpg", ".jpeg", ".dcm", ".ima")


@dataclass
class AugmentResult:
    out_dir: Path
    manifest: Path
    real_counts: dict[str, int]  # train rows per class: what the balance counts
    synthetic_counts: dict[str, int]  # delivered (a near-copy left out is not counted)
    models: dict[str, Path] = field(default_factory=dict)
    report: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class Cancelled(Exception):
    """The caller asked to stop; nothing was written to out_dir."""


def _staging_dir(out_dir: Path) -> Path:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as err:  # name the user's folder, not the hidden staging one
        raise OSError(err.errno, f"cannot write the output folder ({err.strerror})", str(out_dir)) from None
    return staging


def _user_path(err: OSError, staging: Path, out_dir: Path) -> OSError:
    """The same error with the staging folder in its file name replaced by ``out_dir``."""
    name = str(err.filename or "")
    if name.startswith(str(staging)):
        name = str(out_dir) + name[len(str(staging)):]
    return OSError(err.errno or errno.EIO, err.strerror or str(err), name or str(out_dir))


def resolve_preprocess(chosen: PreprocessConfig | None, spatial_dims: int) -> PreprocessConfig:
    """The user's preprocessing; settings they did not give take the defaults of the cohort's
    2-D/3-D kind (so ``{nan_to_zero: true}`` alone works for PNG slices too)."""
    if chosen is None:
        return PreprocessConfig(spatial_dims=spatial_dims)
    if "spatial_dims" in chosen.model_fields_set:
        return chosen
    return PreprocessConfig(spatial_dims=spatial_dims,
                            **{k: getattr(chosen, k) for k in chosen.model_fields_set})


def training_rows(cohort: Cohort) -> list[int]:
    """Indices of the rows generators may learn from: ``split == train`` when the cohort has a
    split, every row when it has none. A row without a split among rows with one is refused:
    guessing could put a test scan into training."""
    splits = [item.split for item in cohort]
    if not any(splits):
        return list(range(len(cohort)))
    missing = [str(item.path) for item in cohort if not item.split]
    if missing:
        raise CohortError(f"{cohort.source}: {len(missing)} row(s) have no split while others do "
                          f"(first: {missing[0]}); give every row train, val or test")
    return [i for i, split in enumerate(splits) if split.lower() == TRAIN]


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
    source_paths: Literal["absolute", "relative"] = "absolute",
) -> AugmentResult:
    """Balance ``cohort`` into ``out_dir`` (see the module docstring for what is written).

    ``source_paths``: how the manifest's ``source_path`` column names the inputs: absolute
    paths (the CLI), or relative to the cohort's folder (the workers: no server paths).
    """
    config = config or AugmentConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CohortError(f"{out_dir}: {'output folder exists and is not empty' if out_dir.is_dir() else 'is a file, not a folder'}; choose another")
    report = progress or (lambda stage, fraction: None)
    job_id = job_id or uuid.uuid4().hex[:12]

    report("validating", 0.0)
    given = cohort if isinstance(cohort, Cohort) else read_cohort(cohort)
    real = Cohort([i for i in given if not i.synthetic], given.source, list(given.notes))
    if not real.items:
        raise CohortError(f"{given.source}: every row is synthetic; augment learns from real scans only")
    _check_labels(real)
    train_idx = training_rows(real)
    train_counts = {c: sum(1 for i in train_idx if real.items[i].label == c) for c in real.classes}
    wanted = synthetic_counts(train_counts, target, config.max_per_class)
    # the native size and the cohort-wide intensity range, from the cohort (models/data/settle.py)
    pre = settle_preprocess(resolve_preprocess(config.preprocess, real.spatial_dims), real, train_idx)
    staging = _staging_dir(out_dir)
    cache = Path(cache_dir) if cache_dir else staging / ".cache"
    try:
        # Every scan is read and checked before any training starts. qc.skip_bad_scans: one that
        # fails is left out of training (still written to real/) and listed in the report.
        qc, bad = config.qc, {}
        for k, item in enumerate(real):
            data, affine, _ = load_scan(item.path, spatial_dims=pre.spatial_dims, nan_to_zero=pre.nan_to_zero)
            bad[k] = _qc_problem(item.path, raw_problem(data, affine, pre, qc), qc)
            report("checking scans", 0.02 * (k + 1) / len(real))
        # A skipped scan that cannot even be preprocessed (a constant one) is left out of real/ too.
        keep = [k for k in range(len(real)) if not bad[k] or _preprocessable(real, k, pre, cache)]
        unwritten = [{"path": None, "source_path": _source_name(real.items[k], real, source_paths),
                      "reason": f"{bad[k]}; not written to real/ (it cannot be preprocessed)"}
                     for k in range(len(real)) if k not in keep]
        if unwritten:
            bad = {i: bad[k] for i, k in enumerate(keep)}
            real = Cohort([real.items[k] for k in keep], real.source, real.notes)
            train_idx = training_rows(real)
        x = load_tensors(real, pre, cache)
        for k, (item, scan) in enumerate(zip(real, x)):
            bad[k] = bad[k] or _qc_problem(item.path, preprocessed_problem(scan[0].numpy(), qc), qc)
        bad = {k: problem for k, problem in bad.items() if problem}
        if bad:
            train_idx = [i for i in train_idx if i not in bad]
            train_counts = {c: sum(1 for i in train_idx if real.items[i].label == c) for c in real.classes}
            wanted = synthetic_counts(train_counts, target, config.max_per_class)
        _refuse_duplicate_subjects(real, x, train_idx, wanted)
        report("writing real scans", 0.03)
        rows = _write_real(real, x, pre, staging, config.real_scans, source_paths)
        report("validating", 0.05)
        notes = list(given.notes) + (
            [f"left out {sum(i.synthetic for i in given)} synthetic row(s) of the input"]
            if any(i.synthetic for i in given) else [])
        fitting = FitRequest(x, [item.label for item in real], train_idx, [r["source_path"] for r in rows],
                             [c for c, n in wanted.items() if n > 0], config, pre, staging, job_id, report,
                             should_stop, checkpoints, notes)
        result = _generate(real, rows, wanted, fitting)
        if cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
        report("packaging", 0.97)
        if bad or unwritten:
            result.metrics["skipped_scans"] = [{"path": rows[k]["path"], "source_path": rows[k]["source_path"],
                                                "reason": problem} for k, problem in bad.items()] + unwritten
            (staging / "report" / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
        _write_summary(result, staging / "report" / "summary.txt")
        share_like_umask(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        staging.replace(out_dir)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, ValueError):
            raise _user_path(err, staging, out_dir) from None
        raise
    result = _relocate(result, staging, out_dir)
    report("done", 1.0)
    return result


SKIP_HINT = f"; to leave such scans out of training instead, {setting('skip_bad_scans')}, or change the qc thresholds"


def _qc_problem(path: Path, problem: str | None, qc) -> str | None:
    """A scan's quality-control problem: refused (with the way around it) unless qc.skip_bad_scans."""
    if problem is not None and not qc.skip_bad_scans:
        refuse(path, problem + SKIP_HINT)
    return problem


def _preprocessable(cohort: Cohort, k: int, pre: PreprocessConfig, cache: Path) -> bool:
    try:
        load_tensors(Cohort([cohort.items[k]], cohort.source), pre, cache)
    except (RuntimeError, ValueError):
        return False
    return True


def _check_labels(cohort: Cohort) -> None:
    for label in cohort.classes:  # class names become folder names in the output
        if not label or "/" in label or "\\" in label or label.startswith("."):
            raise CohortError(f"{cohort.source}: class label {label!r} cannot be used as a folder name")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _source_name(item, cohort: Cohort, how: str) -> str:
    if item.source_path:  # the input was an mcvae output: keep the original's name
        return item.source_path
    if how == "absolute":
        return str(item.path.resolve())
    root = cohort.source if cohort.source and cohort.source.is_dir() else (cohort.source or item.path).parent
    try:
        return item.path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return item.path.name


def _write_real(cohort: Cohort, x: torch.Tensor, pre: PreprocessConfig, staging: Path,
                mode: str, source_paths: str) -> list[dict[str, str]]:
    """Write every real scan into ``real/<class>/`` and return its manifest rows."""
    out = output_format(pre, target_affine(pre))
    rows, taken = [], set()
    for item, scan in zip(cohort, x):
        base = item.path.name if mode == "raw" else _stem(item.path) + out.suffix
        name, k = base, 1
        while (item.label, name.lower()) in taken:  # two inputs of one name (folders, a CSV)
            name, k = f"{k}_{base}", k + 1
        taken.add((item.label, name.lower()))
        target = staging / "real" / item.label / name
        if mode == "raw":
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if item.path.is_dir() else shutil.copyfile)(item.path, target)
        else:
            out.write(target, scan[0].numpy())
        rows.append({"path": f"real/{item.label}/{name}", "label": item.label, "split": item.split or TRAIN,
                     "synthetic": "false", "source_path": _source_name(item, cohort, source_paths)})
    return rows


def sampler_label(cfg: SamplerConfig) -> str:
    """How a trained model's chains were tuned, for sidecars: "mala-entropy-diag", "none"."""
    return "none" if cfg.kind == "none" else f"{cfg.kind}-{cfg.adaptation}-{cfg.preconditioner}"


def write_scans(scans: torch.Tensor, out_dir: Path, label: str, affine, sidecar: dict[str, Any],
                per_scan: list[dict[str, Any]] | None = None) -> list[str]:
    """Write scans as ``syn_<label>_<i>.nii.gz`` (``affine``: a 4x4 array) or in the cohort's own
    format (``affine``: an OutputFormat, e.g. ``.png``), plus a JSON sidecar each (``sidecar``,
    and ``per_scan[i]`` for scan i); return the names."""
    out = affine if isinstance(affine, OutputFormat) else OutputFormat(".nii.gz", affine)
    names = []
    for i, scan in enumerate(scans):
        name = f"syn_{label}_{i:05d}{out.suffix}"
        path = out.write(out_dir / name, scan[0].numpy())
        meta = {"synthetic": True, "class": label, **sidecar, **(per_scan[i] if per_scan else {}), "index": i,
                "shape": list(scan.shape[1:]), "affine": [list(map(float, r)) for r in out.affine]}
        path.with_name(name[: -len(out.suffix)] + ".json").write_text(json.dumps(meta, indent=2))
        names.append(name)
    return names


def write_synthetic(model, n: int, out_dir: Path, label: str, affine, seed: int, model_id: str,
                    job_id: str | None = None, sampler_name: str = "", batch: int = 32,
                    on_batch: Callable[[int], None] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Sample n scans (in batches, clipped to the preprocessed [0, 1] range), write each as NIfTI
    plus a JSON sidecar; return scans and names. No near-copy check: no training scans here."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    chunks = []
    for start in range(0, n, batch):
        chunks.append(model.sample(min(batch, n - start), generator=gen).cpu().clamp(*VALUE_RANGE))
        if on_batch is not None:
            on_batch(start + len(chunks[-1]))
    scans = torch.cat(chunks) if chunks else torch.empty(0, *model.cfg.data_shape)
    names = write_scans(scans, out_dir, label, affine, _sidecar(model, model_id, job_id, seed, sampler_name))
    return scans, names


def _sidecar(model, model_id: str, job_id: str | None, seed: int, sampler_name: str) -> dict[str, Any]:
    return {"model_id": model_id, "job_id": job_id, "seed": seed, "sampler": sampler_name,
            "latent_source": model.cfg.sampling if model.sampling_fitted else "prior"}


@dataclass
class Derived:
    """What a class's synthetic scans were derived from, for its audit: ``own`` (variations: each
    scan's source as a position among the class's train scans, left out of its nearest-scan search),
    ``to_source`` (each scan's RMS-per-voxel distance to its nearest source, of any class) and
    ``subjects`` (variations: the source of each scan, so the diversity check counts only pairs of
    different subjects). All None for scans drawn from the model's latent space alone."""

    own: list[list[int]] | None = None
    to_source: torch.Tensor | None = None
    subjects: list[int] | None = None

    @classmethod
    def of(cls, drawn, picked: list[int], x: torch.Tensor) -> Derived:
        if not any(drawn.sources):
            return cls()
        to_source = torch.stack([rms(x[rows], scan).min() for scan, rows in zip(drawn.scans, drawn.sources)])
        if drawn.info.get("kind") != "variation":  # an interpolation near one end is still a copy of it
            return cls(to_source=to_source)
        position = {row: k for k, row in enumerate(picked)}
        return cls([[position[r] for r in rows if r in position] for rows in drawn.sources], to_source,
                   [rows[0] for rows in drawn.sources])


def _class_report(metrics: dict[str, Any], label: str, picked: list[int], wanted: dict[str, int],
                  names: list[str], train_seconds: float, history, trained_on: list[str], near: dict[str, Any],
                  train_x: torch.Tensor, synthetic: torch.Tensor, staging: Path, config: AugmentConfig,
                  n_base: int | None = None, spread: dict[str, Any] | None = None,
                  derived: Derived | None = None) -> None:
    """One class's montage, curves and metrics entry (memorisation audit of what is delivered);
    ``n_base``: the scans the base model of model_scope "transfer" learned from; ``spread``: the
    model's reconstructions of the class's scans against the scans (report.subject_spread);
    ``derived``: what the scans were derived from (counterfactuals, interpolations, variations)."""
    derived = derived or Derived()
    audit = memorisation_audit(train_x, synthetic, config.near_copy_fraction, derived.own, derived.to_source)
    diversity = synthetic_diversity(train_x, synthetic, audit["copy_threshold"], derived.subjects)
    if diversity is not None:  # this class's scans come first in trained_on
        diversity["that_real_scan"] = trained_on[diversity.pop("that_real_index")]
    slice_montage([s[0].numpy() for s in train_x], [s[0].numpy() for s in synthetic],
                  staging / "report" / f"montage_{label}.png",
                  f"class {label}: real training scans (top) vs synthetic (bottom)")
    whose = f"class {label}" if config.model_scope != "shared" else f"shared model of every class (drew {label})"
    training_curves(history.as_dicts(), staging / "report" / f"curves_{label}.png", whose,
                    target_accept=config.sampler.accept_target if config.sampler.kind != "none" else None)
    last = history.records[-1] if history.records else None
    metrics["classes"][label] = {
        "n_train": len(picked), "n_requested": int(wanted[label]), "n_synthetic": len(names),
        "train_seconds": round(train_seconds, 2), "model_scope": config.model_scope,
        "final_elbo": last.elbo if last else None, "final_accept": history.final_accept(),
        "last_epoch_accept": last.accept if last else None,
        "target_accept": config.sampler.accept_target if config.sampler.kind != "none" else None,
        "trained_on": trained_on, "n_trained_on": len(trained_on), "near_copies": near,
        **({"n_base_trained_on": n_base} if n_base is not None else {}),
        "memorisation": {key: v for key, v in audit.items() if key != "synthetic_nn"},
        "subject_spread": spread, "diversity": diversity,
    }


def _generate(real: Cohort, rows: list[dict[str, str]], wanted: dict[str, int], req: FitRequest) -> AugmentResult:
    """Fit the model(s) (models/fitting.py), then per class: draw (models/generators.py), write,
    report; then the classifier checks, the manifest and report/metrics.json."""
    config, staging = req.config, req.staging
    affine = output_format(req.pre, target_affine(req.pre))  # PNG for a PNG cohort (models/data/settle.py)
    train_counts = {c: sum(1 for i in req.train_idx if real.items[i].label == c) for c in real.classes}
    metrics = _start_metrics(real, train_counts, wanted, req)
    paths = [r["path"] for r in rows]
    manifest_rows, models, draws = list(rows), {}, {}
    checks = ClassifierChecks(req.x, req.labels, req.train_idx, config, req.report, req.should_stop)
    spare = spare_threads(torch.get_num_threads(), config.train.threads,
                          config.train_config(len(req.train_idx), 0).batch_size * math.prod(req.pre.target_shape))
    if spare:  # the checks' real-only classifiers use the CPUs the model's training leaves idle
        checks.start_real_only(spare)
    try:
        for fitted in fit_models(req):
            label, (start, span) = fitted.label, fitted.progress
            models[fitted.key] = fitted.model_dir
            req.report(f"sampling {label}", start + 0.8 * span)
            drawn = draws[label] = draw(DrawRequest(fitted.model, fitted.shared, label, wanted[label], req.x,
                                                    req.labels, req.train_idx, paths, fitted.seed + 1, config))
            sidecar = _sidecar(fitted.model, fitted.model_id, req.job_id, fitted.seed + 1, sampler_label(config.sampler))
            names = write_scans(drawn.scans, staging / "synthetic" / label, label, affine, sidecar, drawn.per_scan)
            manifest_rows += [{"path": f"synthetic/{label}/{name}", "label": label, "split": TRAIN,
                               "synthetic": "true", "source_path": ""} for name in names]
            req.report(f"report {label}", start + 0.9 * span)
            picked = req.rows_of(label)
            _class_report(metrics, label, picked, wanted, names, fitted.train_seconds, fitted.history,
                          [paths[i] for i in fitted.learned_from], drawn.near, req.x[picked], drawn.scans, staging,
                          config, n_base=fitted.n_base, spread=fitted.spread, derived=Derived.of(drawn, picked, req.x))
            metrics["classes"][label].update(retrains=fitted.retrains, generator=drawn.info)
        for label, drawn in draws.items():
            metrics["classes"][label].update(checks.class_metrics(label, drawn))
    except TrainingCancelled as stop:
        raise Cancelled(str(stop)) from None
    finally:
        checks.close()
    delivered = {c: len(draws[c].scans) if c in draws else 0 for c in real.classes}
    manifest = staging / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(manifest_rows)
    _finish_metrics(metrics, train_counts, delivered, staging / "report" / "metrics.json")
    return AugmentResult(staging, manifest, train_counts, delivered, models, staging / "report", metrics)


def _start_metrics(real: Cohort, train_counts: dict[str, int], wanted: dict[str, int],
                   req: FitRequest) -> dict[str, Any]:
    """report/metrics.json before any class is drawn (``notes`` is the request's own list, so the
    notes the fitting adds show)."""
    split_counts: dict[str, dict[str, int]] = {}
    for item in real:
        per = split_counts.setdefault(item.split or "(none)", {})
        per[item.label] = per.get(item.label, 0) + 1
    return {"job_id": req.job_id, "real_counts": real.counts, "train_counts": train_counts,
            "split_counts": split_counts, "requested": wanted, "real_scans": req.config.real_scans,
            "notes": req.notes, "classes": {}}


def _finish_metrics(metrics: dict[str, Any], train_counts: dict[str, int], delivered: dict[str, int],
                    path: Path) -> None:
    """The cohort-wide totals of report/metrics.json, and write it."""
    path.parent.mkdir(exist_ok=True)
    metrics["synthetic_counts"] = delivered
    metrics["final_counts"] = {c: train_counts[c] + delivered[c] for c in train_counts}
    metrics["near_copies_replaced"] = sum(c["near_copies"]["replaced"] for c in metrics["classes"].values())
    metrics["near_copies_left_out"] = sum(c["near_copies"]["left_out"] for c in metrics["classes"].values())
    metrics["delivery"] = delivery(metrics)
    metrics["partial"] = any(d["delivered"] < d["requested"] for d in metrics["delivery"].values())
    path.write_text(json.dumps(metrics, indent=2))


def delivery(metrics: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Synthetic scans asked and delivered per class that was asked for some, and why any were
    not: near-copies of training scans left out after every redraw (``near_copies``), or fewer
    source subjects than scans asked (counterfactual, one scan per subject)."""
    out = {}
    for label, info in metrics["classes"].items():
        if not info["n_requested"]:
            continue
        out[label] = {"requested": info["n_requested"], "delivered": info["n_synthetic"],
                      "left_out_as_near_copies": info["near_copies"]["left_out"],
                      "short_of_sources": (info.get("generator") or {}).get("short_of_sources", 0)}
    return out


def partial_line(metrics: dict[str, Any]) -> str:
    """The one line of a run that delivered fewer synthetic scans than asked (CLI exit
    EXIT_PARTIAL, a job's ``partial`` state and warning event, report/summary.txt); empty when
    every class got what it asked."""
    if not metrics.get("partial"):
        return ""
    counts = []
    for label, d in metrics["delivery"].items():
        why = [f"{d['left_out_as_near_copies']} left out as near-copies of training scans after every redraw"
               if d["left_out_as_near_copies"] else "",
               f"{d['short_of_sources']} short: one scan per source subject" if d["short_of_sources"] else ""]
        why = "; ".join(w for w in why if w)
        counts.append(f"{label} {d['delivered']} of {d['requested']}" + (f" ({why})" if why else ""))
    return ("delivered fewer synthetic scans than asked: " + ", ".join(counts)
            + "; the cohort is not balanced (see report/summary.txt)")


def generator_phrase(info: dict[str, Any], listed: bool = True) -> str:
    """What a class's generator learned from, in words, from its metrics entry (``listed``: the
    scans are listed after the phrase)."""
    these, only = ("these ", " only") if listed else ("", "")
    if info.get("model_scope") == "shared":
        return (f"shared class-conditional generator trained on {these}{info['n_trained_on']} "
                f"scans of every class ({info['n_train']} of this class)")
    if info.get("model_scope") == "transfer":
        return (f"generator trained on {these}{info['n_train']} scans, starting from a base model trained "
                f"on the {info['n_base_trained_on']} scans of every class")
    return f"generator trained on {these}{info['n_train']} scans{only}"


def spread_warning(label: str, spread: dict[str, Any]) -> str:
    """The one wording of a subject-spread warning (report/summary.txt and the CLI)."""
    return (f"class '{label}': the model reconstructs its training scans nearly alike (spread "
            f"{spread['ratio']:.2f} of the real scans'): it learned the class mean more than its subjects, "
            "so its synthetic scans look alike; try another seed or more pretrain_steps")


def diversity_phrase(d: dict[str, Any]) -> str:
    """Synthetic-to-synthetic diversity in words (report.synthetic_diversity's record)."""
    pairs = "synthetic pairs of different source subjects" if d.get("pairs_of_different_sources") else "synthetic pairs"
    return (f"{d['close_pairs']} of {d['synthetic_pairs']} {pairs} lie closer than the near-copy threshold "
            f"({d['threshold']:.4g}), and {d['most_sharing_one_nearest_real']} of {d['n_synthetic']} share one "
            f"nearest real scan ({d['that_real_scan']})")


def class_warnings(label: str, info: dict[str, Any]) -> list[str]:
    """Every warning about one class's synthetic scans, from its metrics entry: the wording of
    report/summary.txt, the CLI and the job's event feed. Besides a low subject spread: scans that
    went out as decoder means alone. A model can sit above the spread line yet tell few subjects
    apart, and then most draws land on a training scan (on one hard-cohort seed, spread 0.42:
    216 redraws and 16 of 30 scans without detail; docs/RESULTS.md, session 9)."""
    warnings = []
    spread = info.get("subject_spread")
    if spread is not None and spread["warning"]:
        warnings.append(spread_warning(label, spread))
    sharpness = info.get("sharpness") or {}
    if sharpness.get("warning"):
        warnings.append(sharpness_warning(label, sharpness))
    fidelity = info.get("fidelity") or {}
    if fidelity.get("warning"):
        warnings.append(
            f"class '{label}': a classifier tells the synthetic scans from the real ones at AUROC "
            f"{fidelity['two_sample_auroc']:.2f} (warning at {fidelity['warning_at']}): they carry a tell")
    utility = info.get("utility")
    if utility and ("skipped" in utility or not utility.get("helped")):
        warnings.append(utility_sentence(label, utility))
    diversity = info.get("diversity") or {}
    if diversity.get("warning"):
        warnings.append(f"class '{label}': the synthetic scans are alike: {diversity_phrase(diversity)}; look at "
                        "the montage, and try another seed, more pretrain_steps or fewer scans")
    near = info.get("near_copies") or {}
    plain = len(near.get("without_detail") or [])
    if plain:
        warnings.append(
            f"class '{label}': {plain} of {info['n_synthetic']} synthetic scans went out as blurred decoder means "
            f"without fine detail (with it they stayed near-copies of a training scan after {near['max_redraws']} "
            f"redraw rounds; {near['replaced']} redraws in all): the model tells few of its subjects apart; look "
            "at the montage, and try another seed or more pretrain_steps")
    return warnings


def _refuse_duplicate_subjects(real: Cohort, x: torch.Tensor, train_idx: list[int], wanted: dict[str, int]) -> None:
    """Refuse a class to be drawn whose train scans hold one subject twice: its near-copy
    threshold would come from that pair (report.DUPLICATE_FRACTION)."""
    if len(train_idx) < 3:
        return
    reference = float(real_nearest(x[train_idx]).median())
    for label, n in wanted.items():
        rows = [i for i in train_idx if real.items[i].label == label]
        pairs = duplicate_pairs(x[rows], reference) if n > 0 else []
        if pairs:
            i, j, distance = pairs[0]
            more = f" (and {len(pairs) - 1} more pair(s))" if len(pairs) > 1 else ""
            raise CohortError(
                f"class '{label}': train scans {real.items[rows[i]].path.name} and {real.items[rows[j]].path.name} "
                f"are near-duplicates (RMS distance {distance:.4g}, under {DUPLICATE_FRACTION} x the cohort's median "
                f"nearest-neighbour distance {reference:.4g}){more}: one subject twice would set the near-copy "
                "threshold and let copies of it through; keep one scan per subject in the train split (give a "
                "repeat scan split 'val' or 'test', or remove it)")


def _write_summary(result: AugmentResult, path: Path) -> None:
    """report/summary.txt: what a person needs to trust the cohort, in a few lines."""
    m = result.metrics
    lines = ["mcvae balanced cohort", ""]
    split = any(name != "(none)" for name in m["split_counts"])
    lines.append(("real scans per split: " if split else "real scans (no split column): ") + "; ".join(
        (f"{name} " if split else "") + ", ".join(f"{c} {n}" for c, n in sorted(per.items()))
        for name, per in sorted(m["split_counts"].items())))
    lines.append(("partly " if m.get("partial") else "")
                 + ("balanced on the train split: " if split else "balanced on all real scans: ") + ", ".join(
        f"{c} {result.real_counts[c]} -> {m['final_counts'][c]}" for c in sorted(result.real_counts)))
    lines.append("synthetic scans asked -> delivered: " + ", ".join(
        f"{c} {d['requested']} -> {d['delivered']}" for c, d in m["delivery"].items()))
    if m.get("partial"):
        lines.append(f"WARNING: {partial_line(m)}")
    skipped = m.get("skipped_scans") or []
    if skipped:
        lines.append(f"left out of training by quality control (qc.skip_bad_scans), still in real/ if readable: "
                     f"{len(skipped)} scan(s)")
        lines += [f"    {s['path'] or '(not in real/)'} ({s['source_path']}): {s['reason']}" for s in skipped]
    for label, info in m["classes"].items():
        near = info["near_copies"]
        audit = info["memorisation"]
        lines += ["", f"class {label}: {info['n_synthetic']} synthetic scans ({info['n_requested']} requested)",
                  f"  {generator_phrase(info)} (split 'train', or every scan when the cohort has no split):"]
        own = info["trained_on"][:info["n_train"]]  # this class's scans come first
        lines += [f"    {p}" for p in own]
        if len(info["trained_on"]) > len(own):
            lines.append(f"    and the {len(info['trained_on']) - len(own)} train scans of the other classes "
                         f"(listed in report/metrics.json, classes.{label}.trained_on)")
        if info.get("final_accept") is not None:
            lines.append(f"  MCMC refinement: mean acceptance {info['final_accept']:.3f} over the last 10% of its "
                         f"epochs (target {info['target_accept']:.3f})")
        lines.append(f"  near-copies (nearer a training scan than {near['copy_fraction']} x the smallest "
                     f"real-to-real distance, {near['threshold']:.4g} RMS per voxel): policy {near['policy']}, "
                     f"{near['replaced']} redrawn, {near['left_out']} left out"
                     + (f" (variations: {near['rule']})" if near.get("rule") else ""))
        if near.get("fine_detail", "none") != "none":
            lines.append(f"  fine detail ({near['fine_detail']}): the residual of the training scan whose "
                         f"reconstruction is nearest each scan; {len(near['without_detail'])} scan(s) delivered "
                         "as decoder means alone (their detail made them near-copies)")
        spread = info.get("subject_spread")
        if spread is not None:
            lines.append(f"  subjects learned: the model's reconstructions of the {info['n_train']} training scans lie "
                         f"{spread['ratio']:.2f} x as far apart as the scans (nearest-neighbour RMS median "
                         f"{spread['reconstruction_nn_median']:.4g} against {spread['real_nn_median']:.4g})")
        generator = info.get("generator") or {}
        if generator.get("kind") == "counterfactual":
            dist = generator.get("distance_to_source") or {}
            lines.append(f"  generator counterfactual ({generator['abduction']} abduction): each scan is a majority "
                         f"train subject moved to class {label}, with that subject's own detail (sidecar 'source'); "
                         f"RMS change from its source median {dist.get('median', 0):.4g}"
                         + (f"; {generator['short_of_sources']} fewer than requested: one scan per source subject"
                            if generator.get("short_of_sources") else ""))
        elif generator.get("kind") == "interpolation":
            lines.append(f"  generator interpolation ({generator['abduction']} abduction): each scan lies between two "
                         f"train subjects of class {label} (sidecar 'sources')")
        elif generator.get("kind") == "variation":
            dist = generator.get("distance_to_source") or {}
            lines.append(f"  generator variation ({generator['abduction']} abduction): each scan is a train subject of "
                         f"class {label} moved {generator['scale']:g} prior SDs along the difference of two majority "
                         f"subjects, with its own detail (sidecar 'source', 'variation_from'); RMS change from its "
                         f"source median {dist.get('median', 0):.4g}")
        sharpness = info.get("sharpness") or {}
        if sharpness.get("gradient_energy_ratio") is not None:
            lines.append(f"  sharpness: gradient energy synthetic / real {sharpness['gradient_energy_ratio']:.3f} "
                         f"(matched: {sharpness['band'][0]}-{sharpness['band'][1]})")
        fidelity = info.get("fidelity") or {}
        if fidelity:
            auc, share = fidelity.get("two_sample_auroc"), fidelity.get("reference_share")
            lines.append("  fidelity gate: real vs synthetic two-sample AUROC "
                         + (f"{auc:.3f}" if auc is not None else "n/a (fewer than 2 scans)")
                         + f" (0.5: indistinguishable; warning at {fidelity['warning_at']}); a classifier trained "
                         + "on the real train split calls "
                         + (f"{100 * share:.0f}%" if share is not None else "n/a")
                         + f" of them {label}")
        if (info.get("utility") or {}).get("helped"):  # otherwise it is one of the warnings below
            lines.append(f"  utility self-check: {utility_sentence(label, info['utility'])}")
        if info.get("diversity"):
            lines.append(f"  synthetic-to-synthetic diversity: {diversity_phrase(info['diversity'])}")
        lines += [f"  WARNING: {w}" for w in class_warnings(label, info)]
        own = audit.get("nearest_excludes_own_source")
        to_source = audit.get("synthetic_to_source")
        lines.append(f"  final audit: {len(audit['flagged'])} delivered scan(s) below the threshold; nearest "
                     + ("training scan other than its own source" if own else "training scan")
                     + f" at median {((audit['synthetic_to_real_nn'] or {}).get('median') or 0):.4g} "
                     f"(real-to-real median {audit['real_to_real_nn']['median']:.4g})"
                     + (f"; distance to its own source median {to_source['median']:.4g} (a derived scan is that "
                        "subject altered)" if to_source else ""))
    for note in m.get("notes", []):
        lines.append(f"note: {note}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _relocate(result: AugmentResult, old: Path, new: Path) -> AugmentResult:
    moved = lambda p: new / p.relative_to(old) if p else p
    result.out_dir, result.manifest, result.report = new, moved(result.manifest), moved(result.report)
    result.models = {k: moved(v) for k, v in result.models.items()}
    return result
