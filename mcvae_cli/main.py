"""mcvae: synthetic minority-class scans that balance imaging cohorts.

Every command prints one readable line and exits non-zero on bad input (exit 2). ``augment``
and ``demo`` exit 3 when the output was written but some class got fewer synthetic scans than
asked (one ``mcvae: partial:`` line gives asked and delivered counts per class).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Each command imports what it uses inside its function, so that `mcvae --help` and the commands
# that need no model (serve, keys, doctor, ...) start without loading torch and MONAI.
EXIT_BAD_INPUT = 2
# The output was written, but some class got fewer synthetic scans than asked (near-copies left
# out after every redraw, or fewer source subjects): the cohort is not balanced. One line says so.
EXIT_PARTIAL = 3
EXIT_CANCELLED = 130


def _augment_config(args) -> object:
    from pydantic import ValidationError

    from models.options import AugmentConfig

    from .errors import one_line

    data = {}
    if getattr(args, "config", None):
        from .config_file import read_config_file

        data = read_config_file(args.config)
    # A resolution profile (models/profiles.py) gives the base settings; the file's own override
    # them, and --profile overrides the file's profile: one rule with the gateway's.
    from models.profiles import config_with_profile

    data = config_with_profile(data, getattr(args, "profile", None))
    for flag, key in (("pretrain_steps", "pretrain_steps"), ("mcmc_steps", "mcmc_steps"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            data[key] = value
    if getattr(args, "device", None):
        data.setdefault("train", {})["device"] = args.device
    if getattr(args, "nan_to_zero", False):
        _section(data, "preprocess")["nan_to_zero"] = True
    if getattr(args, "raw_real", False):
        data["real_scans"] = "raw"
    if getattr(args, "keep_near_copies", False):
        data["near_copies"] = "keep"
    if getattr(args, "model_scope", None):
        data["model_scope"] = args.model_scope
    if getattr(args, "generator", None):
        data["generator"] = args.generator
    if getattr(args, "abduction", None):
        data["abduction"] = args.abduction
    if getattr(args, "fine_detail", None):
        data["fine_detail"] = args.fine_detail
    if getattr(args, "check_utility", None) is not None:
        data["check_utility"] = args.check_utility
    for flag in ("min_foreground", "min_fov_coverage"):
        if getattr(args, flag, None) is not None:
            _section(data, "qc")[flag] = getattr(args, flag)
    if getattr(args, "skip_bad_scans", False):
        _section(data, "qc")["skip_bad_scans"] = True
    try:
        config = AugmentConfig(**data)
    except (ValidationError, TypeError) as err:
        where = f"{args.config}: " if getattr(args, "config", None) else ""
        raise ValueError(where + one_line(err)) from None
    return _with_threads(config)


def _with_threads(config):
    """Use the torch threads of models/threads.py for this command: the CPUs it may use, or the
    config's own ``train.threads``. A VAE training caps them further by its minibatch's size
    (``Trainer.fit``). The config itself is left as the user wrote it, so a command and a job with
    the same settings have the same config (a worker picks its own threads per process alike)."""
    from models.threads import choose_threads, use_threads

    use_threads(config.train.threads or choose_threads())
    return config


def _section(data: dict, key: str) -> dict:
    if data.get(key) is None:
        data[key] = {}
    if not isinstance(data[key], dict):
        raise ValueError(f"{key}: expected a mapping of settings")  # noqa: TRY004 (main prints ValueErrors)
    return data[key]


def _writable_out(out: str | Path) -> Path:
    """Refuse an --out that is a non-empty folder or cannot be written, before any work is done;
    the message names the user's path (not the hidden staging folder written beside it)."""
    import tempfile

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder; --out names the output folder to write (choose another)")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: output folder exists and is not empty; choose another")
    try:  # a probe beside it, where the staging folder will go (root ignores mode bits)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise ValueError(f"{out}: cannot write the output folder here ({err.strerror or err})") from None
    return out


DIFFICULTY_HELP = ("0 easy (today's cohort) .. 1 hard: subtler atrophy, anatomical/intensity variation, "
                   "3 scanner sites (default 0)")


def _difficulty(args) -> float:
    """--difficulty, checked before anything is written by the demo cohort's own rule (parsed
    there, not by argparse, so that a word is refused in one line too)."""
    from models.data.demo import check_difficulty

    return check_difficulty(args.difficulty, "--difficulty")


def cmd_demo_cohort(args) -> int:
    from models.data import make_demo_cohort, make_demo_slices

    difficulty = _difficulty(args)
    if args.slices:
        cohort = make_demo_slices(args.out, n_control=args.n_control, n_ad=args.n_ad, seed=args.seed,
                                  difficulty=difficulty)
    else:
        cohort = make_demo_cohort(args.out, n_control=args.n_control, n_ad=args.n_ad,
                                  shape=(args.size,) * 3, seed=args.seed, difficulty=difficulty)
    counts = ", ".join(f"{c} {n}" for c, n in cohort.counts.items())
    print(f"wrote demo cohort ({counts}) to {Path(args.out).resolve()}")
    return 0


def cmd_inspect(args) -> int:
    from models.data import PreprocessConfig, format_summary, read_cohort, summarize

    cohort = read_cohort(args.source)
    preprocess = PreprocessConfig(spatial_dims=cohort.spatial_dims, nan_to_zero=args.nan_to_zero)
    summary = summarize(cohort, preprocess=preprocess)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _print_result(result) -> None:
    m = result.metrics
    counts = ", ".join(f"{c} {result.real_counts[c]} -> {result.real_counts[c] + result.synthetic_counts[c]}"
                       for c in result.real_counts)
    split = "the train split" if any(s != "(none)" for s in m.get("split_counts", {})) else "all real scans"
    print(f"{'partly ' if m.get('partial') else ''}balanced cohort: {counts} (counted on {split})")
    from models.augment import generator_phrase

    for label, info in m.get("classes", {}).items():
        near = info["near_copies"]
        learned = generator_phrase(info, listed=False)
        line = (f"  class {label}: {learned}; near-copies of training "
                f"scans: {near['replaced']} replaced by new draws, {near['left_out']} left out")
        if near.get("without_detail"):
            line += f", {len(near['without_detail'])} delivered without fine detail"
        if info.get("retrains"):
            line += (f"; trained {info['retrains'] + 1} times (a model that learned the class mean only was "
                     "trained again from a fresh seed)")
        if near["policy"] == "keep":
            line = (f"  class {label}: {learned}; "
                    f"{len(info['memorisation']['flagged'])} near-copies kept (--keep-near-copies)")
        print(line)
    print(f"  manifest:        {result.manifest}  (paths relative to {result.out_dir})")
    print(f"  real scans:      {result.out_dir / 'real'}  ({m.get('real_scans', 'preprocessed')})")
    print(f"  synthetic scans: {result.out_dir / 'synthetic'}")
    print(f"  report:          {result.report}  (summary.txt, montage_*.png, curves_*.png, metrics.json)")
    print(f"  models:          {result.out_dir / 'models'}")
    from models.augment import class_warnings
    from models.checks import utility_sentence

    for skipped in m.get("skipped_scans") or []:
        print(f"  warning: left out of training by quality control (--skip-bad-scans): "
              f"{skipped['path'] or skipped['source_path']}: "
              f"{skipped['reason']}")
    for label, info in m.get("classes", {}).items():
        fidelity, sharpness = info.get("fidelity") or {}, info.get("sharpness") or {}
        if fidelity.get("two_sample_auroc") is not None:
            print(f"  class {label}: fidelity gate: real vs synthetic two-sample AUROC "
                  f"{fidelity['two_sample_auroc']:.2f} (0.5: indistinguishable); sharpness synthetic / real "
                  f"{sharpness.get('gradient_energy_ratio') or float('nan'):.2f}")
        if info.get("utility") and info["utility"].get("helped"):
            print(f"  {utility_sentence(label, info['utility'])}")
        for warning in class_warnings(label, info):
            print(f"  warning: {warning}")
        short = info["near_copies"]["left_out"]  # fewer source subjects: the "partial" line says so
        if short:
            print(f"  warning: class '{label}': {short} of {info['n_requested']} synthetic scans left out "
                  "as near-copies after every redraw (see report/summary.txt)")
        if info["near_copies"]["policy"] == "keep" and info["memorisation"]["flagged"]:
            print(f"  warning: {len(info['memorisation']['flagged'])} synthetic '{label}' scans are "
                  "near-copies of training scans (kept; see report/metrics.json)")


def _run_augment(source, out, target, config) -> int:
    from models.augment import augment

    from .progress import StageBar

    _writable_out(out)
    # Training takes most of an augmentation: lines every 5 % of the job are ~10 % of training.
    with StageBar("augment", line_step=5) as bar:
        result = augment(source, out, target=target, config=config, progress=bar)
    _print_result(result)
    from models.augment import partial_line

    short = partial_line(result.metrics)
    if short:
        print(f"mcvae: partial: {short}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def cmd_augment(args) -> int:
    return _run_augment(args.source, args.out, args.target, _augment_config(args))


def cmd_demo(args) -> int:
    from models.data import make_demo_cohort

    difficulty = _difficulty(args)
    out = Path(args.out)
    if (out / "balanced").exists():
        raise ValueError(f"{out / 'balanced'}: exists already; pass another --out")
    cohort = make_demo_cohort(out / "cohort", n_control=args.n_control, n_ad=args.n_ad,
                              shape=(args.size,) * 3, seed=args.seed or 0, difficulty=difficulty)
    counts = ", ".join(f"{c} {n}" for c, n in cohort.counts.items())
    print(f"demo cohort ({counts}, {args.size}^3, from the MNI152 template): {out / 'cohort'}")
    if args.check_utility is None:  # the demo shows the self-check unless asked not to
        args.check_utility = True
    return _run_augment(cohort, out / "balanced", args.target, _augment_config(args))


def cmd_train(args) -> int:
    import math

    from models import save
    from models.augment import resolve_preprocess, training_rows
    from models.checks import training_sharpness
    from models.config import ModelConfig
    from models.data import Cohort, CohortError, load_tensors, read_cohort, settle_preprocess
    from models.data.io import share_like_umask
    from models.fitting import fit_class_model
    from models.report import training_curves

    from .progress import StageBar

    config = _augment_config(args)
    out = _writable_out(args.out)
    cohort = read_cohort(args.source)
    if args.label not in cohort.classes:
        raise CohortError(f"class '{args.label}' is not in the cohort (classes: {', '.join(cohort.classes)})")
    # The same rows augment would learn from: the train split when the cohort has one.
    real = Cohort([i for i in cohort if not i.synthetic], cohort.source, cohort.notes)
    # the native size and the cohort-wide intensity range, as augment settles them
    pre = settle_preprocess(resolve_preprocess(config.preprocess, cohort.spatial_dims), real, training_rows(real))
    picked = [i for i in training_rows(real) if real.items[i].label == args.label]
    training = Cohort([real.items[i] for i in picked], cohort.source, cohort.notes)
    if not training.items:
        raise CohortError(f"class '{args.label}' has no training scans (split 'train')")
    with StageBar(f"train {args.label}") as bar:
        bar("preprocessing", 0.0)
        x = load_tensors(training, pre)
        model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
        model, sampler, history, _ = fit_class_model(
            x, model_cfg, config, config.seed, on_step=lambda d, t: bar("training", d / t))
    path = save(out, model, sampler, {"class": args.label, "seed": config.seed,
                                      "preprocess": pre.model_dump(mode="json"),
                                      "history": history.as_dicts(),
                                      "trained_on": [str(i.path) for i in training],
                                      **training_sharpness({args.label: x})})
    training_curves(history.as_dicts(), path / "curves.png", f"class {args.label}",
                    target_accept=config.sampler.accept_target if config.sampler.kind != "none" else None)
    share_like_umask(path)
    last = history.records[-1]
    per_voxel = -last.bits_per_dim * math.log(2)
    print(f"saved model to {path} (trained on {len(x)} '{args.label}' scans; final ELBO {last.elbo:.1f} "
          f"nats per scan, {per_voxel:.3f} nats per voxel; curves: {path / 'curves.png'})")
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from models import load
    from models.augment import write_synthetic
    from models.checks import sample_warning, sampled_sharpness
    from models.conditional import for_class
    from models.data import PreprocessConfig, output_format, target_affine
    from models.data.io import share_like_umask
    from models.targets import MAX_SYNTHETIC_PER_CLASS
    from models.threads import choose_threads, use_threads

    from .progress import StageBar

    if not 1 <= args.n <= MAX_SYNTHETIC_PER_CLASS:
        raise ValueError(f"-n: ask for between 1 and {MAX_SYNTHETIC_PER_CLASS} scans, got {args.n}")
    use_threads(choose_threads())
    out = _writable_out(args.out)
    model, _, meta = load(args.model)
    model, drawn = for_class(model, meta, args.label, "--class")
    label = drawn or "synthetic"
    pre = PreprocessConfig(**meta["preprocess"]) if "preprocess" in meta else None
    # PNGs for a model of a PNG cohort (its settled preprocessing says so), NIfTI otherwise
    affine = output_format(pre, target_affine(pre)) if pre else np.eye(4)
    with StageBar(f"sample {label}") as bar:
        scans, names = write_synthetic(model, args.n, out, label, affine, seed=args.seed,
                                       model_id=str(Path(args.model).resolve()),
                                       on_batch=lambda done: bar("sampling", done / args.n))
    share_like_umask(out)
    sharp = sampled_sharpness(meta, drawn, scans)
    print(f"wrote {len(names)} scans of class '{label}' to {out.resolve()}"
          + (f" (gradient energy {sharp['gradient_energy_ratio']:.2f} x the training scans')" if sharp else ""))
    if sharp and sharp["warning"]:
        print(f"warning: {sample_warning(label, sharp)}", file=sys.stderr)
    return 0


def cmd_worker(args) -> int:
    from workers import run_worker

    return run_worker(queues=args.queues.split(","), concurrency=args.concurrency,
                      device=args.device, hostname=args.hostname) or 0


TARGET_HELP = ("how many synthetic scans: 'balance' (every class up to the largest, counted on the "
               "train split), a ratio of the largest class such as 0.5, or counts to ADD per class, "
               "'AD=40' or 'AD=40,MCI=10' (AD=40 makes 40 synthetic AD scans on top of the real ones; "
               "default: balance)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcvae")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file with AugmentConfig settings "
                   "(preprocess, model, sampler, train, pretrain_steps, mcmc_steps, seed, near_copies, ...); "
                   "flags given here override it")
    from models.profiles import PROFILE_NAMES

    p.add_argument("--profile", choices=PROFILE_NAMES,
                   help="resolution profile: demo (32^3, 6 mm), standard (64^3, 3 mm), research (2 mm, GPU)")
    p.add_argument("--pretrain-steps", type=int, metavar="N", help="plain-ELBO optimiser steps per model (default 600)")
    p.add_argument("--mcmc-steps", type=int, metavar="N", help="MCMC-refined optimiser steps per model (default 150)")
    p.add_argument("--seed", type=int, help="random seed of training and sampling (default 0)")
    p.add_argument("--device", help="where to train: cpu or cuda (default cpu)")
    p.add_argument("--nan-to-zero", action="store_true",
                   help="read NaN or infinite voxels as 0 (background) instead of refusing the scan")


def _add_scope_flag(p: argparse.ArgumentParser) -> None:
    from typing import get_args

    from models.options import AugmentConfig  # torch-free: the choices are the config's own

    p.add_argument("--model-scope", choices=get_args(AugmentConfig.model_fields["model_scope"].annotation),
                   help="shared: one class-conditional model trained on every class's train scans, "
                        "sampled per class (default); per_class: one model per minority class, on "
                        "its own train scans; transfer: per_class, each started from a base model "
                        "trained on every class's train scans (about 1.5x the time)")


def _add_generator_flags(p: argparse.ArgumentParser, utility_default: bool = False) -> None:
    from typing import get_args

    from models.options import AugmentConfig, FineDetailPolicy, GeneratorKind

    p.add_argument("--generator", choices=get_args(GeneratorKind),
                   help="how new minority scans are made: variation (the default: each train subject of the "
                        "class moved along the difference of two majority subjects, keeping its own detail), "
                        "aggregate (new latents of the class, decoded; the default with --model-scope per_class "
                        "or transfer), counterfactual (each majority train subject moved to the class, keeping its "
                        "own detail), interpolation (between two train subjects of the class)")
    p.add_argument("--abduction", choices=get_args(AugmentConfig.model_fields["abduction"].annotation),
                   help="counterfactual/interpolation/variation: latents of each source scan from the tuned MCMC chain "
                        "(mcmc, the default) or the encoder's mean (mean)")
    p.add_argument("--fine-detail", choices=get_args(FineDetailPolicy),
                   help="aggregate: deliver decoder means (none, the default) or add the nearest training "
                        "scan's residual to each new scan (nearest: another subject's detail)")
    p.add_argument("--check-utility", action=argparse.BooleanOptionalAction, default=None,
                   help="k-fold self-check on the train split: does a small classifier do better on held-out real "
                        "scans with the synthetic scans than without? (default: "
                        + ("on" if utility_default else "off") + ")")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw-real", action="store_true",
                   help="put byte copies of the real input scans in the output instead of preprocessed "
                        "ones (for labs that preprocess themselves; their headers are not cleaned)")
    p.add_argument("--keep-near-copies", action="store_true",
                   help="deliver synthetic scans that are near-copies of a training scan (only flagged in "
                        "the report) instead of replacing them by new draws")


def _add_qc_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-scans", action="store_true",
                   help="leave scans that fail quality control out of training (listed with the reason in "
                        "report/summary.txt and metrics.json, still written to real/) instead of stopping "
                        "(config qc.skip_bad_scans)")
    p.add_argument("--min-foreground", type=float, metavar="F",
                   help="quality control: fewest foreground voxels, a fraction (default 0.05; 0: no check; "
                        "config qc.min_foreground)")
    p.add_argument("--min-fov-coverage", type=float, metavar="F",
                   help="quality control: smallest fraction of the target grid a scan's field of view must "
                        "cover along each axis (default 0.25; 0: no check; config qc.min_fov_coverage)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mcvae {_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="build the embedded demo cohort and balance it (the main job)")
    p.add_argument("--out", default="mcvae-demo",
                   help="folder for cohort/ and balanced/ (default ./mcvae-demo)")
    p.add_argument("--n-control", type=int, default=40, metavar="N", help="control (CN) scans (default 40)")
    p.add_argument("--n-ad", type=int, default=4, metavar="N", help="Alzheimer's-like (AD) scans (default 4)")
    p.add_argument("--size", type=int, default=32, help="voxels per axis (default 32)")
    p.add_argument("--difficulty", default="0", metavar="D", help=DIFFICULTY_HELP)
    p.add_argument("--target", default="balance", help=TARGET_HELP)
    _add_training_flags(p)
    _add_scope_flag(p)
    _add_generator_flags(p, utility_default=True)
    _add_output_flags(p)
    _add_qc_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-cohort", help="write the imbalanced demo cohort (NIfTI or PNG slices)")
    p.add_argument("out", help="folder to write (class sub-folders CN/ and AD/)")
    p.add_argument("--n-control", type=int, default=20, metavar="N", help="control (CN) scans (default 20)")
    p.add_argument("--n-ad", type=int, default=2, metavar="N", help="Alzheimer's-like (AD) scans (default 2)")
    p.add_argument("--size", type=int, default=32, help="voxels per axis of 3-D scans (default 32)")
    p.add_argument("--seed", type=int, default=0, help="subjects are drawn from this seed (default 0)")
    p.add_argument("--slices", action="store_true", help="2-D PNG slices instead of 3-D NIfTI")
    p.add_argument("--difficulty", default="0", metavar="D", help=DIFFICULTY_HELP)
    p.set_defaults(func=cmd_demo_cohort)

    p = sub.add_parser("inspect", help="summarise a cohort: classes, splits, shapes, spacings, quality warnings")
    p.add_argument("source", help="folder with one sub-folder per class, or a CSV manifest "
                                  "(an mcvae output manifest too)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--nan-to-zero", action="store_true",
                   help="read NaN or infinite voxels as 0, as augment --nan-to-zero would")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("augment", help="train per minority class and write a balanced cohort in one space")
    p.add_argument("source", help="folder with one sub-folder per class, or a CSV manifest "
                                  "path,label[,split] (an mcvae output manifest too)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--target", default="balance", help=TARGET_HELP)
    _add_training_flags(p)
    _add_scope_flag(p)
    _add_generator_flags(p)
    _add_output_flags(p)
    _add_qc_flags(p)
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser("train", help="train one class's model (on its train split) and save it")
    p.add_argument("source", help="folder with one sub-folder per class, or a CSV manifest")
    p.add_argument("--class", dest="label", required=True, help="the class to learn")
    p.add_argument("--out", required=True, help="model folder to write (must not exist or be empty)")
    _add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="write N synthetic scans from a saved model")
    p.add_argument("model", help="a model folder written by 'mcvae train' (or models/<class> or "
                                 "models/shared of an augment output)")
    p.add_argument("-n", type=int, required=True, help="how many scans to write")
    p.add_argument("--class", dest="label", metavar="CLASS",
                   help="the class to draw: required for a shared (class-conditional) model; "
                        "optional for a per-class model (must then be its class)")
    p.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("worker", help="start a job worker (Celery) on this machine")
    p.add_argument("--queues", default="gpu,cpu", help="queues to serve, comma-separated (default gpu,cpu)")
    p.add_argument("--concurrency", type=int, default=1, help="job processes (default 1)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--hostname", default=None, help="worker name (default: Celery's)")
    p.set_defaults(func=cmd_worker)

    from .ops import add_ops_commands

    add_ops_commands(sub)
    return parser


def _exit_on_sigterm() -> None:
    """SIGTERM (docker stop, kill, a scheduler's timeout) unwinds like Ctrl-C instead of killing
    outright, so partial outputs and their preprocessing caches (patient data) are removed."""
    import signal
    import threading

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


def main(argv: list[str] | None = None) -> int:
    from models.threads import prefer_passive_waiting

    prefer_passive_waiting()  # before any command imports torch (models/threads.py says why)
    args = build_parser().parse_args(argv)
    from .errors import one_line

    _exit_on_sigterm()

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("mcvae: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except (ValueError, OSError) as err:  # ScanError, CohortError, ValidationError are ValueErrors
        print(f"mcvae: error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
