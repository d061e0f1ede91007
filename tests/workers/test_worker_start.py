"""A worker told to use CUDA on a machine with no visible GPU refuses to start (issue 23, item 7),
with the reason on one line and a non-zero exit, instead of taking gpu jobs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("how", [["--device", "cuda"], []])
def test_a_cuda_worker_without_a_gpu_refuses_to_start(tmp_path, how):
    """``--device cuda`` and ``MCVAE_DEVICE=cuda`` alike (what compose's GPU worker runs)."""
    if _has_cuda():
        pytest.skip("this machine has a CUDA GPU")
    env = {**os.environ, "MCVAE_DEVICE": "cuda", "MCVAE_DATA_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           # never reached: the check comes before the broker
           "MCVAE_BROKER_URL": "redis://127.0.0.1:1/0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "workers", "--queues", "gpu", *how], env=env, cwd=ROOT,
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [("mcvae worker: not starting: MCVAE_DEVICE=cuda but no CUDA GPU is visible (check the "
                      "driver, CUDA_VISIBLE_DEVICES or the container's GPU reservation; use MCVAE_DEVICE=cpu "
                      "or auto on a machine without one)")], proc.stderr
    assert "celery" not in proc.stdout.lower(), "the Celery worker never started"


def test_the_start_check_passes_cpu_and_auto_and_names_a_missing_device_index():
    from workers.worker import device_problem

    assert device_problem("cpu") is None and device_problem("auto") is None
    if _has_cuda():
        import torch

        count = torch.cuda.device_count()
        assert device_problem("cuda") is None
        assert f"shows {count} CUDA GPU(s)" in device_problem(f"cuda:{count}")
    else:
        assert "no CUDA GPU is visible" in device_problem("cuda:1")
