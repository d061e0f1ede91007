"""Issue 22's 2-D check on real images: do mcvae's synthetic minority images help a classifier on
real held-out Fashion-MNIST (Debian's ``dataset-fashion-mnist``), at 20 minority against 400 majority?

Per class pair (minority, majority) and seed: 20 + 400 training images drawn from the training set,
a held-out balanced test set of 200 + 200 from the test set that no generator sees; grayscale in
[0, 1], padded from 28 x 28 to 32 x 32 (the default hierarchical model halves the grid three
times). One shared class-conditional MCMC-HVAE (augment's default model and budget) per pair and
seed, and from it the generators of bench/generators.py (aggregate draws with nearest fine detail,
counterfactuals from the majority with MCMC or encoder-mean abduction, interpolation, variation), beside
real only and duplicates; the classifier is models.classifier's (2-D, class-balanced batches).

    python bench/fashion_utility.py --pairs 6,0 4,2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohorts import duplicate_copies
from bench.common import budget, machine, parse_args, write_result
from bench.generators import GENERATORS, draw_every_generator, report, score_quality, score_rows
from models.augment import AugmentConfig
from models.classifier import STEPS
from models.config import ModelConfig
from models.fitting import fit_learning_subjects, learned_spread
from models.shared_model import class_view, fit_shared_model

DATA = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 32, 32) grayscale images in [0, 1] (zero-padded from 28 x 28) and their labels."""
    prefix = "train" if split == "train" else "t10k"
    images, labels = DATA / f"{prefix}-images-idx3-ubyte.gz", DATA / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists():
        raise SystemExit(f"{images} is missing: apt-get install dataset-fashion-mnist")
    with gzip.open(images) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    x = torch.nn.functional.pad(torch.tensor(pixels / 255.0, dtype=torch.float32), (2, 2, 2, 2))
    return x, torch.tensor(y.astype(np.int64))


def pick(x: torch.Tensor, y: torch.Tensor, label: int, n: int, g: torch.Generator) -> torch.Tensor:
    members = torch.nonzero(y == label).flatten()
    return x[members[torch.randperm(len(members), generator=g)[:n]]]


def run_pair(minor: int, major: int, seed: int, data, args) -> tuple[list[dict], list[dict]]:
    (x_train, y_train), (x_test_all, y_test_all) = data
    g = torch.Generator().manual_seed(seed)
    x_min, x_maj = pick(x_train, y_train, minor, args.n_minor, g), pick(x_train, y_train, major, args.n_major, g)
    x_test = torch.cat([pick(x_test_all, y_test_all, major, args.n_test, g), pick(x_test_all, y_test_all, minor,
                                                                                  args.n_test, g)])
    y_test = torch.cat([torch.zeros(args.n_test), torch.ones(args.n_test)]).long()
    config = budget(AugmentConfig(), args.quick)
    model_cfg = ModelConfig(data_shape=(1, 32, 32), **config.model.model_dump())
    t0 = time.perf_counter()
    scans = {"major": x_maj, "minor": x_min}
    shared, retrained, _ = fit_learning_subjects(
        lambda s, _: fit_shared_model(scans, model_cfg, config, s),
        lambda fitted: {"minor": learned_spread(class_view(fitted, "minor"), x_min)}, config.retrains,
        seed * 1009, lambda *_: None)
    train_s = time.perf_counter() - t0
    tag = f"{NAMES[minor]} vs {NAMES[major]}, seed {seed}"
    print(f"{tag}: shared model {train_s:.0f} s, {retrained} retrains", flush=True)
    n_max = max(args.counts) * args.n_minor
    extras, quality = draw_every_generator(shared, x_maj, x_min, n_max, seed, "major", "minor",
                                           near_copies=config.near_copies, chosen=args.generators)
    extras["duplicates"] = duplicate_copies(x_min, n_max, seed)
    # the two-sample test's classifiers: the library's 100 steps (--quick: --clf-steps)
    score_quality(extras, quality, x_min, seed, train_s, args.clf_steps if args.quick else STEPS)
    pair = f"{NAMES[minor]} vs {NAMES[major]}"
    for row in quality:
        row.update({"seed": seed, "pair": pair})
    runs = score_rows(extras, ["duplicates", *[g for g in GENERATORS if g in extras]], args.counts, x_maj, x_min, x_test, y_test, seed,
                      args.clf_steps, tag)
    for row in runs:
        row["pair"] = pair
    return runs, quality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", nargs="+", default=["6,0", "4,2"], help="minority,majority class indices")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--n-minor", type=int, default=20)
    ap.add_argument("--n-major", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--clf-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--generators", nargs="+", choices=GENERATORS, default=None,
                    help="draw only these generators (default: every one)")
    ap.add_argument("--tag", default="")
    args = parse_args(ap, {"pairs": ["6,0"], "seeds": [0], "counts": [1], "n_minor": 4, "n_major": 8,
                           "n_test": 4, "clf_steps": 2})
    torch.set_num_threads(args.threads)
    data = load("train"), load("test")
    started = time.perf_counter()
    runs, quality = [], []
    for pair in args.pairs:
        minor, major = (int(v) for v in pair.split(","))
        for seed in args.seeds:
            r, q = run_pair(minor, major, seed, data, args)
            runs += r
            quality += q
            payload = {"args": vars(args) | {"difficulty": "n/a (Fashion-MNIST)"}, "machine": machine(),
                       "command": "python " + " ".join(sys.argv), "runs": runs, "quality": quality,
                       "seconds": round(time.perf_counter() - started, 1)}
            write_result(f"fashion_utility{args.tag}", payload)
    for pair in dict.fromkeys(r["pair"] for r in runs):
        print(f"\n## {pair}")
        report({**payload, "runs": [r for r in runs if r["pair"] == pair],
                "quality": [q for q in quality if q["pair"] == pair]})


if __name__ == "__main__":
    main()
