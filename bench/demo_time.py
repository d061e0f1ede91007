"""Wall-clock time of `mcvae demo` (the main job on the embedded demo cohort), end to end.

Goal (issue #3): within 10 minutes on the 2-core CPU machine. Runs the real console command
in a fresh output folder and reports the time of each stage from its output.

    python bench/demo_time.py [--keep OUT]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, parse_args, write_result

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
    print(f"mcvae demo: {seconds:.1f} s wall clock (goal 600 s) on {where}")
    path = write_result("demo_time", {"machine": where, "seconds": seconds, "goal_seconds": 600,
                                      "stdout": proc.stdout})
    print(f"wrote {path}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
