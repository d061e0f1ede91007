"""Issue 25, item 6: promises the output must keep. A run short of synthetic scans says so (exit
3, one line of asked/delivered counts, counts in summary.txt and metrics.json); synthetic scans
are compared with each other; a minority class whose train scans are one subject is refused."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mcvae_cli.main import EXIT_PARTIAL, main
from models.data import make_demo_cohort
from models.report import synthetic_diversity
from tests.cli.test_cli import PROGRESS_LINE, _fails_with


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    make_demo_cohort(root, n_control=6, n_ad=3, shape=(16, 16, 16), seed=2)
    return root


def test_a_run_short_of_synthetic_scans_exits_3_with_the_counts(cohort, config, tmp_path, capsys):
    # counterfactual: one scan per majority (CN) train subject, so 6 at most of the 8 asked
    out = tmp_path / "out"
    code = main(["augment", str(cohort), "--out", str(out), "--config", str(config), "--target", "AD=8",
                 "--generator", "counterfactual", "--abduction", "mean"])
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL == 3
    err = [line for line in captured.err.splitlines() if not PROGRESS_LINE.match(line)]
    assert err == [("mcvae: partial: delivered fewer synthetic scans than asked: AD 6 of 8 (2 short: one scan per "
                    "source subject); the cohort is not balanced (see report/summary.txt)")], err
    assert "partly balanced cohort: AD 3 -> 9, CN 6 -> 6" in captured.out
    assert "\nbalanced cohort" not in "\n" + captured.out
    metrics = json.loads((out / "report" / "metrics.json").read_text())  # the output is still delivered
    assert metrics["partial"] is True
    assert metrics["delivery"] == {"AD": {"requested": 8, "delivered": 6, "left_out_as_near_copies": 0,
                                          "short_of_sources": 2}}
    summary = (out / "report" / "summary.txt").read_text()
    assert "partly balanced on all real scans: AD 3 -> 9, CN 6 -> 6" in summary
    assert "synthetic scans asked -> delivered: AD 8 -> 6" in summary
    assert "WARNING: delivered fewer synthetic scans than asked: AD 6 of 8" in summary
    # the synthetic scans are compared with each other, in metrics.json and summary.txt
    diversity = metrics["classes"]["AD"]["diversity"]
    assert diversity["synthetic_pairs"] == 15 and 0 <= diversity["close_pairs"] <= 15
    assert diversity["that_real_scan"].startswith("real/AD/")
    assert "synthetic-to-synthetic diversity: " in summary and " of 15 synthetic pairs lie closer" in summary


def test_a_run_that_delivers_what_it_asked_exits_0_and_says_so(cohort, config, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["augment", str(cohort), "--out", str(out), "--config", str(config), "--target", "AD=2",
                 "--generator", "counterfactual", "--abduction", "mean"]) == 0
    assert "partial" not in capsys.readouterr().err
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["partial"] is False and metrics["delivery"]["AD"]["delivered"] == 2
    assert "synthetic scans asked -> delivered: AD 2 -> 2" in (out / "report" / "summary.txt").read_text()


def test_minority_train_scans_of_one_subject_are_refused(cohort, config, tmp_path, capsys):
    # issue 25: two minority scans of one subject set a near-copy threshold of 0.0008
    dup = tmp_path / "dup"
    for label in ("CN", "AD"):
        (dup / label).mkdir(parents=True)
    for path in sorted((cohort / "CN").glob("*.nii.gz")):
        (dup / "CN" / path.name).write_bytes(path.read_bytes())
    first = min((cohort / "AD").glob("*.nii.gz"))
    image = nib.load(first)
    data = np.asarray(image.dataobj, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 1e-3 * float(data.max()), data.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, image.affine), dup / "AD" / "AD_a.nii.gz")
    nib.save(nib.Nifti1Image(data + noise, image.affine), dup / "AD" / "AD_b.nii.gz")
    out = tmp_path / "out"
    _fails_with(capsys, ["augment", str(dup), "--out", str(out), "--config", str(config)],
                "class 'AD': train scans AD_a.nii.gz and AD_b.nii.gz are near-duplicates",
                "keep one scan per subject in the train split")
    assert not out.exists()


def test_a_target_typo_gets_a_did_you_mean(cohort, config, tmp_path, capsys):
    _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "o"), "--config", str(config),
                         "--target", "AF=3"], "unknown class 'AF'; did you mean 'AD'?", "(classes: AD, CN)")


def test_synthetic_diversity_counts_close_pairs_and_a_crowded_nearest_real_scan():
    real = torch.stack([torch.full((1, 4, 4), v) for v in (0.0, 0.5, 1.0)])
    alike = torch.stack([torch.full((1, 4, 4), 0.51 + 0.001 * i) for i in range(4)])
    d = synthetic_diversity(real, alike, threshold=0.25)
    assert (d["close_pairs"], d["synthetic_pairs"], d["most_sharing_one_nearest_real"]) == (6, 6, 4)
    assert d["that_real_index"] == 1 and d["warning"] is True
    spread = torch.stack([torch.full((1, 4, 4), v) for v in (0.02, 0.48, 0.98)])
    d = synthetic_diversity(real, spread, threshold=0.25)
    assert (d["close_pairs"], d["most_sharing_one_nearest_real"], d["warning"]) == (0, 1, False)
    assert synthetic_diversity(real, spread[:1], threshold=0.25) is None
    # variations: two of each of two subjects; a subject's own pair lies close by design and is not
    # counted, nor is the crowding on its source; two subjects' variations that meet still are
    varied = torch.stack([torch.full((1, 4, 4), v) for v in (0.02, 0.03, 0.97, 0.98)])
    d = synthetic_diversity(real, varied, threshold=0.25, sources=[0, 0, 2, 2])
    assert (d["close_pairs"], d["synthetic_pairs"], d["warning"]) == (0, 4, False)
    d = synthetic_diversity(real, alike, threshold=0.25, sources=[0, 0, 2, 2])
    assert (d["close_pairs"], d["synthetic_pairs"], d["warning"]) == (4, 4, True)
