"""mcvae: synthetic minority-class scans that balance imaging cohorts.

Every command prints one readable line and exits non-zero on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


def _augment_config(args) -> "object":
    from models.augment import AugmentConfig

    data = {}
    if getattr(args, "config", None):
        from .config_file import read_config_file

        data = read_config_file(args.config)
    # A resolution profile (models/profiles.py) gives the base settings; the file's own override it.
    profile = getattr(args, "profile", None) or data.pop("profile", None)
    data.pop("profile", None)
    if profile:
        from models.profiles import profile_settings

        data = profile_settings(profile, data)
    for flag, key in (("pretrain_steps", "pretrain_steps"), ("mcmc_steps", "mcmc_steps"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            data[key] = value
    if getattr(args, "device", None):
        data.setdefault("train", {})["device"] = args.device
    return AugmentConfig(**data)


def cmd_demo_cohort(args) -> int:
    from models.data import make_demo_cohort, make_demo_slices

    if args.slices:
        cohort = make_demo_slices(args.out, n_control=args.n_control, n_ad=args.n_ad, seed=args.seed)
    else:
        cohort = make_demo_cohort(args.out, n_control=args.n_control, n_ad=args.n_ad,
                                  shape=(args.size,) * 3, seed=args.seed)
    counts = ", ".join(f"{c} {n}" for c, n in cohort.counts.items())
    print(f"wrote demo cohort ({counts}) to {Path(args.out).resolve()}")
    return 0


def cmd_inspect(args) -> int:
    from models.data import format_summary, read_cohort, summarize

    summary = summarize(read_cohort(args.source))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _print_result(result) -> None:
    counts = ", ".join(f"{c} {result.real_counts[c]} -> {result.real_counts[c] + result.synthetic_counts[c]}"
                       for c in result.real_counts)
    print(f"balanced cohort: {counts}")
    print(f"  synthetic scans: {result.out_dir / 'synthetic'}")
    print(f"  manifest:        {result.manifest}")
    print(f"  report:          {result.report}  (montage_*.png, curves_*.png, metrics.json)")
    print(f"  models:          {result.out_dir / 'models'}")
    for label, info in result.metrics.get("classes", {}).items():
        flagged = info["memorisation"]["flagged"]
        if flagged:
            print(f"  warning: {len(flagged)} synthetic '{label}' scans are near-copies of real scans "
                  f"(see report/metrics.json)")


def _run_augment(source, out, target, config) -> int:
    from models.augment import augment

    from .progress import StageBar

    with StageBar("augment") as bar:
        result = augment(source, out, target=target, config=config, progress=bar)
    _print_result(result)
    return 0


def cmd_augment(args) -> int:
    return _run_augment(args.source, args.out, args.target, _augment_config(args))


def cmd_demo(args) -> int:
    from models.data import make_demo_cohort

    out = Path(args.out)
    if (out / "balanced").exists():
        raise ValueError(f"{out / 'balanced'}: exists already; pass another --out")
    cohort = make_demo_cohort(out / "cohort", n_control=args.n_control, n_ad=args.n_ad,
                              shape=(args.size,) * 3, seed=args.seed or 0)
    counts = ", ".join(f"{c} {n}" for c, n in cohort.counts.items())
    print(f"demo cohort ({counts}, {args.size}^3, from the MNI152 template): {out / 'cohort'}")
    return _run_augment(cohort, out / "balanced", args.target, _augment_config(args))


def cmd_train(args) -> int:
    from models import save
    from models.augment import ModelConfig, fit_class_model
    from models.data import CohortError, PreprocessConfig, load_tensors, read_cohort
    from models.report import training_curves

    from .progress import StageBar

    config = _augment_config(args)
    cohort = read_cohort(args.source)
    if args.label not in cohort.classes:
        raise CohortError(f"class '{args.label}' is not in the cohort (classes: {', '.join(cohort.classes)})")
    pre = config.preprocess or PreprocessConfig(spatial_dims=cohort.spatial_dims)
    x = load_tensors(cohort, pre, label=args.label)
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
    with StageBar(f"train {args.label}") as bar:
        model, sampler, history, train_cfg = fit_class_model(
            x, model_cfg, config, config.seed, on_step=lambda d, t: bar("training", d / t))
    path = save(args.out, model, sampler, {"class": args.label, "seed": config.seed,
                                           "preprocess": pre.model_dump(mode="json"),
                                           "history": history.as_dicts()})
    training_curves(history.as_dicts(), path / "curves.png", f"class {args.label}")
    last = history.records[-1]
    print(f"saved model to {path} (final ELBO {last.elbo:.1f} nats, {last.bits_per_dim:.3f} bits/dim; "
          f"curves: {path / 'curves.png'})")
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from models import load
    from models.augment import write_synthetic
    from models.data import PreprocessConfig, target_affine
    from models.targets import MAX_SYNTHETIC_PER_CLASS

    if not 1 <= args.n <= MAX_SYNTHETIC_PER_CLASS:
        raise ValueError(f"-n: ask for between 1 and {MAX_SYNTHETIC_PER_CLASS} scans, got {args.n}")
    model, _, meta = load(args.model)
    pre = PreprocessConfig(**meta["preprocess"]) if "preprocess" in meta else None
    affine = target_affine(pre) if pre else np.eye(4)
    label = meta.get("class", "synthetic")
    _, names = write_synthetic(model, args.n, Path(args.out), label, affine, seed=args.seed,
                               model_id=str(Path(args.model).resolve()))
    print(f"wrote {len(names)} scans of class '{label}' to {Path(args.out).resolve()}")
    return 0


def cmd_worker(args) -> int:
    from workers import run_worker

    return run_worker(queues=args.queues.split(","), concurrency=args.concurrency,
                      device=args.device, hostname=args.hostname) or 0


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or TOML file with AugmentConfig settings "
                   "(preprocess, model, sampler, train, pretrain_steps, mcmc_steps, seed)")
    from models.profiles import PROFILE_NAMES

    p.add_argument("--profile", choices=PROFILE_NAMES,
                   help="resolution profile: demo (32^3, 6 mm), standard (64^3, 3 mm), research (2 mm, GPU)")
    p.add_argument("--pretrain-steps", type=int, help="plain-ELBO steps per model (default 600)")
    p.add_argument("--mcmc-steps", type=int, help="MCMC-refined steps per model (default 150)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcvae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="build the embedded demo cohort and balance it (the main job)")
    p.add_argument("--out", default="mcvae-demo", help="output folder (default ./mcvae-demo)")
    p.add_argument("--n-control", type=int, default=40)
    p.add_argument("--n-ad", type=int, default=4)
    p.add_argument("--size", type=int, default=32, help="voxels per axis (default 32)")
    p.add_argument("--target", default="balance")
    _add_training_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-cohort", help="write the imbalanced demo cohort (NIfTI or PNG slices)")
    p.add_argument("out")
    p.add_argument("--n-control", type=int, default=20)
    p.add_argument("--n-ad", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", action="store_true", help="2-D PNG slices instead of 3-D NIfTI")
    p.set_defaults(func=cmd_demo_cohort)

    p = sub.add_parser("inspect", help="summarise a cohort: classes, shapes, spacings, warnings")
    p.add_argument("source", help="folder with one sub-folder per class, or a CSV manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("augment", help="train per minority class and write synthetic scans that balance the cohort")
    p.add_argument("source", help="folder with one sub-folder per class, or a CSV manifest path,label[,split]")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--target", default="balance", help="'balance', a ratio such as 0.5, or counts such as AD=40")
    _add_training_flags(p)
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser("train", help="train one class's model and save it")
    p.add_argument("source")
    p.add_argument("--class", dest="label", required=True)
    p.add_argument("--out", required=True, help="model folder to write")
    _add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="write N synthetic scans from a saved model")
    p.add_argument("model")
    p.add_argument("-n", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("worker", help="start a job worker (Celery) on this machine")
    p.add_argument("--queues", default="gpu,cpu")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--hostname", default=None)
    p.set_defaults(func=cmd_worker)

    from .ops import add_ops_commands

    add_ops_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import one_line

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
