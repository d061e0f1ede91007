"""Issue 11, items 5 and 6: inputs users have (DICOM without extensions, CSVs with other
columns, config mistakes) and command-line manners (non-empty --out, permissions, --version,
help, progress in logs, unwritable --out)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcvae_cli.main import build_parser, main
from models.data import load_scan, make_demo_cohort, read_cohort
from tests.cli.test_cli import PROGRESS_LINE, TINY, _fails_with
from tests.models.dicom_series import write_dicom_series


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    make_demo_cohort(root, n_control=4, n_ad=2, shape=(16, 16, 16), seed=2)
    return root


@pytest.fixture()
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("suffix", ["", ".IMA", ".1"])
def test_dicom_files_are_recognised_by_content_whatever_their_name(tmp_path, suffix):
    volume = np.arange(8 * 6 * 5).reshape(8, 6, 5)
    series = write_dicom_series(tmp_path / "AD" / "sub-01", volume)
    for f in sorted(series.glob("*.dcm")):
        f.rename(f.with_name(f.stem + suffix))
    (series / "notes.txt").write_text("not a slice")
    data, _, meta = load_scan(series)
    np.testing.assert_array_equal(data, volume)
    assert meta["format"] == "dicom"
    shutil.copytree(series, tmp_path / "CN" / "sub-02")
    cohort = read_cohort(tmp_path)
    assert cohort.counts == {"AD": 1, "CN": 1}


def test_a_csv_with_other_columns_says_unknown_columns(cohort, tmp_path, capsys):
    sheet = tmp_path / "cohort.csv"
    sheet.write_text(f"filename,diagnosis\n{min((cohort / 'AD').iterdir())},AD\n")
    line = _fails_with(capsys, ["inspect", str(sheet)], "unknown columns", "'filename'", "path", "label")
    assert "not found" not in line


def test_config_errors_name_the_config_file(cohort, tmp_path, capsys):
    bad = tmp_path / "settings.yaml"
    bad.write_text("sampler: {kind: gibbs}\npretrain_stepz: 3\n")
    line = _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "o"), "--config", str(bad)],
                       "sampler.kind", "pretrain_stepz")
    assert line.startswith(f"mcvae: error: {bad}: ")
    bad.write_text("sampler: [unclosed\n")
    _fails_with(capsys, ["train", str(cohort), "--class", "AD", "--out", str(tmp_path / "m"), "--config", str(bad)],
                str(bad), "not valid YAML")
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


def test_train_and_sample_refuse_a_non_empty_out_and_write_group_readable_files(cohort, config, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    _fails_with(capsys, ["train", str(cohort), "--class", "AD", "--out", str(taken), "--config", str(config)],
                str(taken), "not empty")
    model = tmp_path / "model"
    assert main(["train", str(cohort), "--class", "AD", "--out", str(model), "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "nats per voxel" in captured.out and "bits/dim" not in captured.out
    # Progress in a log (stderr is not a terminal here): a line per stage, about every 10 %.
    progress = [line for line in captured.err.splitlines() if PROGRESS_LINE.match(line)]
    assert progress[0].startswith("train AD:   0% preprocessing")
    percents = [int(line.split("%")[0].rsplit(" ", 1)[1]) for line in progress if "training" in line]
    assert 6 <= len(percents) <= 12 and percents[-1] >= 90, progress  # 16 steps here: coarse
    _fails_with(capsys, ["sample", str(model), "-n", "2", "--out", str(taken)], str(taken), "not empty")
    assert (taken / "keep.txt").read_text() == "mine" and len(list(taken.iterdir())) == 1
    assert main(["sample", str(model), "-n", "2", "--out", str(tmp_path / "s")]) == 0
    for path in [*model.rglob("*"), model, *(tmp_path / "s").rglob("*")]:
        assert path.stat().st_mode & 0o040, (path, oct(path.stat().st_mode))


def test_an_unwritable_out_is_named_as_the_user_gave_it(cohort, config, capsys):
    # /proc refuses new entries even to root (mode bits alone would not stop a root test run).
    out = "/proc/mcvae-no/balanced"
    line = _fails_with(capsys, ["augment", str(cohort), "--out", out, "--config", str(config)], out)
    assert ".partial" not in line
    line = _fails_with(capsys, ["train", str(cohort), "--class", "AD", "--out", out, "--config", str(config)], out)
    assert ".partial" not in line and ".balanced." not in line


def test_version_and_help_on_every_flag():
    proc = subprocess.run([sys.executable, "-m", "mcvae_cli.main", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("mcvae ")
    missing = []

    def walk(parser: argparse.ArgumentParser, where: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{where} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "mcvae")
    assert missing == []
    augment_help = build_parser()._subparsers._group_actions[0].choices["augment"].format_help()
    assert "AD=40 makes 40 synthetic AD scans on top of the real ones" in " ".join(augment_help.split())
