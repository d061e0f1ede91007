"""How hard is the demo cohort at a given ``difficulty``? (issue 12: a cohort where duplicating the
real AD scans no longer solves the task.)

Per difficulty and seed: the downstream data of bench/downstream.py (an imbalanced training
cohort, default 60 CN + 6 AD, and a held-out balanced 20 + 20 test cohort, demo seed 1000 + s,
same difficulty) and its classifier recipe, trained on the real scans only, with 5x duplicated AD
scans, with 5x classical (MONAI affine + elastic) copies, and with 5x *new real* AD subjects of
the same cohort (the "more real AD" ceiling: what a perfect generator could give). No generator
is trained here: this only calibrates the knob.

    nice -n 15 python bench/difficulty.py --difficulties 0 0.5 0.75 1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohorts import build_data, classical_copies, duplicate_copies, held_out, labelled
from bench.common import machine, parse_args, write_result
from bench.metrics import mean_sd, score
from models.classifier import train_classifier
from models.data import PreprocessConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--difficulties", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-control", type=int, default=60)
    ap.add_argument("--n-ad", type=int, default=6)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--count", type=int, default=5, help="extra AD scans, x minority count")
    ap.add_argument("--clf-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = parse_args(ap, {"difficulties": [0.6], "seeds": [0], "n_control": 4, "n_ad": 2, "n_test": 2,
                           "count": 1, "clf_steps": 2})
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pre = PreprocessConfig()
    rows: dict[str, dict[str, list[float]]] = {}
    for d in args.difficulties:
        for seed in args.seeds:
            n = args.count * args.n_ad
            with tempfile.TemporaryDirectory(prefix="difficulty-") as tmp:  # subject k is the same at any count
                data = build_data(seed, Path(tmp), args.n_control, args.n_ad + n, args.n_test, pre, difficulty=d)
            x_cn, x_ad, x_more = data["train_CN"], data["train_AD"][:args.n_ad], data["train_AD"][args.n_ad:]
            x_test, y_test = held_out(data)
            for name, extra in (("real", x_ad[:0]), (f"duplicates {args.count}x", duplicate_copies(x_ad, n, seed)),
                                (f"classical {args.count}x", classical_copies(x_ad, n, seed)),
                                (f"more real AD {args.count}x", x_more)):
                x, y = labelled(x_cn, torch.cat([x_ad, extra]))
                s = score(train_classifier(x, y, seed, args.clf_steps, 16, 3e-3, "weighted"), x_test, y_test)
                for metric, value in s.items():
                    rows.setdefault(f"d={d:g} {name}", {}).setdefault(metric, []).append(value)
                print(f"difficulty {d:g} seed {seed} {name}: balanced accuracy {s['balanced_accuracy']:.3f} "
                      f"AUROC {s['auroc']:.3f}", flush=True)
    summary = {k: {m: mean_sd(v) for m, v in r.items()} for k, r in rows.items()}
    print(f"\n{machine()}, {time.perf_counter() - started:.0f} s; mean ± sd over seeds {args.seeds}")
    print("| difficulty, condition | balanced accuracy | AUROC |\n|---|---|---|")
    for k, r in summary.items():
        ba, au = r["balanced_accuracy"], r["auroc"]
        print(f"| {k} | {ba['mean']:.3f} ± {ba['sd']:.3f} | {au['mean']:.3f} ± {au['sd']:.3f} |")
    write_result(f"difficulty{args.tag}", {"args": vars(args), "machine": machine(),
                                            "runs": rows, "summary": summary})


if __name__ == "__main__":
    main()
