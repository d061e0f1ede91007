"""Wall-clock time of `mcvae demo` (the main job on the embedded demo cohort), end to end.

Goal: at most 240 s alone on the 2-core CPU machine, with the fidelity gate and the utility
self-check (issue 22; issue 3 asked for 10 minutes before the checks). Runs the real console
command in a fresh output folder and reports the time of each stage from its report.

    python bench/demo_time.py [--keep OUT]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, parse_args, write_result

GOAL_SECONDS = 240
# the CLI's plain progress lines on a pipe: "<title>: <percent>% <stage> (<elapsed> s)"
PROGRESS_LINE = re.compile(r"^[^:]+: +\d+% (?P<stage>.+) \((?P<elapsed>\d+) s\)$")


def stage_starts(stderr: str) -> dict[str, float]:
    """When each stage of the run began, in seconds from the augmentation's start (the CLI's
    progress lines; a stage's number is dropped, e.g. "fold 2 of 4", so each kind shows once)."""
    starts: dict[str, float] = {}
    for line in stderr.splitlines():
        match = PROGRESS_LINE.match(line.strip())
        if match:
            stage = re.sub(r" \(.*\)$", "", match["stage"])
            starts.setdefault(stage, float(match["elapsed"]))
    return starts

# --quick: a small cohort, a few training steps, no retraining, the report's classifiers a few
# steps each (QUICK_CONFIG) and no utility self-check; aggregate draws, since a model of a few
# steps moves a variation (the default generator) too little from its subject to deliver it
QUICK_DEMO = ["--n-control", "6", "--n-ad", "2", "--size", "16", "--pretrain-steps", "4", "--mcmc-steps", "2",
              "--no-check-utility"]
QUICK_CONFIG = "retrains: 0\ncheck_steps: 2\ngenerator: aggregate\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the demo here and keep it (default: temporary)")
    args = parse_args(parser, {})
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mcvae-demo-bench-"))
    mcvae = Path(sys.executable).with_name("mcvae")
    started = time.perf_counter()
    quick = []
    if args.quick:
        config = out / "quick.yaml"
        out.mkdir(parents=True, exist_ok=True)
        config.write_text(QUICK_CONFIG)
        quick = [*QUICK_DEMO, "--config", str(config)]
    proc = subprocess.run([str(mcvae), "demo", "--out", str(out), *quick], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    print(proc.stdout)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"mcvae demo failed with exit code {proc.returncode}")
    where = machine("cpu")
    stages = stage_starts(proc.stderr)
    print(f"mcvae demo: {seconds:.1f} s wall clock (goal {GOAL_SECONDS} s) on {where}; stages began at: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))
    path = write_result("demo_time", {"machine": where, "seconds": seconds, "goal_seconds": GOAL_SECONDS,
                                      "stages": stages, "stdout": proc.stdout})
    print(f"wrote {path}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
