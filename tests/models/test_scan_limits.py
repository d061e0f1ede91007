"""A scan is judged by its header before its voxels are read (issue 10, item 9): a small
.nii.gz declaring a huge volume is refused at once, without inflating it."""

from __future__ import annotations

import gzip
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from models.data import ScanError, load_scan, write_scan


def _zeros_bomb(path, side: int = 640) -> None:
    """A real .nii.gz of side^3 uint8 zeros (640: 262 MB inflated, about 0.25 MB on disk),
    written slice by slice so making it costs no memory either."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header.binaryblock + b"\0" * (int(header["vox_offset"]) - header.sizeof_hdr))
        plane = bytes(side * side)
        for _ in range(side):
            fh.write(plane)


def test_a_nifti_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.nii.gz"
    _zeros_bomb(bomb)
    assert bomb.stat().st_size < 2_000_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ScanError, match=r"declares 262144000 voxels .*MCVAE_MAX_SCAN_VOXELS"):
            load_scan(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 20 << 20  # reading it would take 1 GiB (float32); the header check takes nothing


def test_the_voxel_limit_is_configurable(tmp_path, monkeypatch):
    scan = write_scan(tmp_path / "small.nii.gz", np.ones((8, 8, 8)), np.eye(4))
    monkeypatch.setenv("MCVAE_MAX_SCAN_VOXELS", "511")
    with pytest.raises(ScanError, match="declares 512 voxels .*limit of 511"):
        load_scan(scan)
    monkeypatch.setenv("MCVAE_MAX_SCAN_VOXELS", "512")
    assert load_scan(scan)[0].shape == (8, 8, 8)
    monkeypatch.setenv("MCVAE_MAX_SCAN_VOXELS", "lots")
    with pytest.raises(ValueError, match="MCVAE_MAX_SCAN_VOXELS: expected a positive whole number"):
        load_scan(scan)


def test_the_cli_refuses_a_nifti_bomb_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "cohort" / "AD").mkdir(parents=True)
    _zeros_bomb(tmp_path / "cohort" / "AD" / "bomb.nii.gz")
    repo = Path(__file__).resolve().parents[2]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mcvae_cli.main", "inspect", str(tmp_path / "cohort")],
                          capture_output=True, text=True, cwd=repo, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "bomb.nii.gz: its header declares 262144000 voxels" in proc.stderr
    assert time.perf_counter() - started < 60  # Python and the CLI start-up; the scan is never read
