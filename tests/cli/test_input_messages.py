"""Issue 25, items 2, 4 and 6 (split): messages that name the real cause, one split rule for real
and synthetic rows, and quality control a user can steer (``qc`` settings, --skip-bad-scans)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mcvae_cli.main import main
from models.augment import augment
from models.data import CohortError, make_demo_cohort, write_scan
from tests.cli.test_cli import TINY, _fails_with


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    make_demo_cohort(root, n_control=5, n_ad=3, shape=(16, 16, 16), seed=4)
    return root


def _manifest(tmp_path: Path, cohort: Path, rows: list[tuple[str, str, str]], header="path,label,split") -> Path:
    """A manifest of the cohort's scans: (relative path, label, split) per row."""
    path = tmp_path / "cohort.csv"
    lines = [header] + [",".join(str(cohort / p) if i == 0 else v for i, v in enumerate((p, label, split)))
                        for p, label, split in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows_of(cohort: Path) -> list[tuple[str, str, str]]:
    return [(f"{c}/{p.name}", c, "train") for c in ("AD", "CN") for p in sorted((cohort / c).glob("*.nii.gz"))]


def test_a_typo_in_a_split_value_is_refused_naming_it(cohort, config, tmp_path, capsys):
    rows = _rows_of(cohort)
    rows[1] = (rows[1][0], "AD", "tset")  # one of the 3 AD scans: would leave AD 2 train scans
    out = tmp_path / "out"
    line = _fails_with(capsys, ["augment", str(_manifest(tmp_path, cohort, rows)), "--out", str(out),
                                "--config", str(config)], "row 3", "unknown split value 'tset'", "train, val, test")
    assert "scan(s)" not in line and not out.exists()
    # any letter case of the three is fine (read as lower case); inspect reads them alike
    rows[1] = (rows[1][0], "AD", "Test")
    assert main(["inspect", str(_manifest(tmp_path, cohort, rows)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == {"train": 7, "test": 1}


def test_a_label_typo_is_named_with_the_class_it_likely_means(cohort, config, tmp_path, capsys):
    rows = _rows_of(cohort)
    rows[0] = (rows[0][0], "ADD", "train")
    out = tmp_path / "out"
    _fails_with(capsys, ["augment", str(_manifest(tmp_path, cohort, rows)), "--out", str(out), "--config",
                         str(config)], "class 'ADD' has 1 scan(s)", "unknown label 'ADD'", "typo of class 'AD'",
                "AD 2, ADD 1, CN 5")
    rows[0] = (rows[0][0], "ad", "train")  # letter case only
    _fails_with(capsys, ["augment", str(_manifest(tmp_path, cohort, rows)), "--out", str(out), "--config",
                         str(config)], "unknown label 'ad'", "typo of class 'AD'")
    # a label that can be no folder name is named too
    rows[0] = (rows[0][0], ".AD", "train")
    _fails_with(capsys, ["augment", str(_manifest(tmp_path, cohort, rows)), "--out", str(out), "--config",
                         str(config)], "class label '.AD'")
    assert not out.exists()


def test_an_out_that_is_a_file_says_it_is_a_file(cohort, config, tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    line = _fails_with(capsys, ["augment", str(cohort), "--out", str(out), "--config", str(config)],
                       str(out), "is a file")
    assert "not empty" not in line and out.read_text() == "keep me"
    with pytest.raises(CohortError, match="is a file, not a folder"):  # the library says so too
        augment(cohort, out)
    assert out.read_text() == "keep me"


def test_qc_thresholds_are_settings_in_the_config_and_flags(cohort, config, tmp_path, capsys):
    strict = tmp_path / "strict.yaml"
    strict.write_text(TINY + "qc: {min_foreground: 0.9}\n")
    line = _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "o1"), "--config", str(strict)],
                       "nearly empty", "at least 90% expected", "--skip-bad-scans", "qc: {skip_bad_scans: true}")
    assert line.count("mcvae: error") == 1
    _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "o2"), "--config", str(config),
                         "--min-foreground", "0.9"], "at least 90% expected")
    typo = tmp_path / "typo.yaml"
    typo.write_text(TINY + "qc: {min_forground: 0.1}\n")
    _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "o3"), "--config", str(typo)],
                "qc.min_forground")
    assert not any((tmp_path / f"o{n}").exists() for n in (1, 2, 3))


def _speck(path: Path) -> None:
    """A small bright object in a field of noise: reads fine, 'nearly empty' for quality control."""
    data = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32) * 0.01
    data[30:34, 30:34, 30:34] = 100.0
    write_scan(path, data, np.diag([3.0, 3.0, 3.0, 1.0]))


def test_skip_bad_scans_trains_without_them_and_lists_them(cohort, config, tmp_path, capsys):
    root = tmp_path / "cohort"
    shutil.copytree(cohort, root)
    _speck(root / "AD" / "speck.nii.gz")
    write_scan(root / "CN" / "zero.nii.gz", np.zeros((16, 16, 16), np.float32), np.diag([12.0, 12.0, 12.0, 1.0]))
    _fails_with(capsys, ["augment", str(root), "--out", str(tmp_path / "refused"), "--config", str(config)],
                "speck.nii.gz", "nearly empty", "--skip-bad-scans")

    out = tmp_path / "out"
    # aggregate draws: this test is about quality control, and the tiny model of a few steps can move
    # a variation (the default generator) too little from its subject to be delivered
    assert main(["augment", str(root), "--out", str(out), "--config", str(config), "--skip-bad-scans",
                 "--generator", "aggregate"]) == 0
    printed = capsys.readouterr().out
    assert "left out of training by quality control" in printed and "real/AD/speck.nii.gz" in printed
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert [(s["path"], s["source_path"]) for s in metrics["skipped_scans"]] == [
        ("real/AD/speck.nii.gz", str((root / "AD" / "speck.nii.gz").resolve())),
        (None, str((root / "CN" / "zero.nii.gz").resolve()))]  # constant: cannot be preprocessed
    assert "nearly empty" in metrics["skipped_scans"][0]["reason"]
    assert "constant intensity" in metrics["skipped_scans"][1]["reason"]
    assert "not written to real/" in metrics["skipped_scans"][1]["reason"]
    assert not (out / "real" / "CN" / "zero.nii.gz").exists()
    assert metrics["train_counts"] == {"AD": 3, "CN": 5}  # balanced as if the scan were not there
    assert metrics["synthetic_counts"] == {"AD": 2, "CN": 0}
    assert not any("speck" in p for p in metrics["classes"]["AD"]["trained_on"])
    summary = (out / "report" / "summary.txt").read_text()
    assert "left out of training by quality control" in summary
    assert "real/AD/speck.nii.gz" in summary and "nearly empty" in summary and "zero.nii.gz" in summary
    assert (out / "real" / "AD" / "speck.nii.gz").is_file()  # readable: still delivered

    # Issue 25 item 6: no split column, so every real row counts as train, and says so like the
    # synthetic rows: filtering split == train keeps the real scans.
    with (out / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} == {"train"}
    assert sum(r["synthetic"] == "false" for r in rows) == 9 and sum(r["synthetic"] == "true" for r in rows) == 2
