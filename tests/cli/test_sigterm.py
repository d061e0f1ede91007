"""A CLI run stopped with SIGTERM leaves no partial output and no cached tensors behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from models.data import make_demo_slices

CONFIG = """
preprocess: {spatial_dims: 2, target_shape: [16, 16]}
model: {arch: mlp, latent_dims: [4], hidden: [32]}
sampler: {kind: mala, n_steps: 2}
train: {batch_size: 4}
pretrain_steps: 100000
mcmc_steps: 4
"""


def test_sigterm_during_augment_removes_the_partial_output_and_its_cache(tmp_path):
    make_demo_slices(tmp_path / "slices", n_control=5, n_ad=2, shape=(16, 16), seed=0)
    (tmp_path / "c.yaml").write_text(CONFIG)
    out = tmp_path / "runs" / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mcvae_cli.main", "augment", str(tmp_path / "slices"),
                             "--out", str(out), "--config", str(tmp_path / "c.yaml")],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".out.partial-*/.cache/*.pt")):  # training has begun
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no cached tensors appeared"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    # communicate, not wait: it drains stderr, so a full pipe cannot hold the process up
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert list(out.parent.iterdir()) == []  # neither the output nor its staging and cache
