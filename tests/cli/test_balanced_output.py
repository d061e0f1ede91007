"""Issue 11: the balanced cohort a lab trains on. One space, self-contained, split-aware, with
quality control and near-copies replaced; every output read back with nibabel."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mcvae_cli.main import main
from models.data import make_demo_cohort, write_scan
from tests.cli.test_cli import _fails_with
from tests.models.dicom_series import write_dicom_series

GRID = np.diag([12.0, 12.0, 12.0, 1.0])
GRID[:3, 3] = -12.0 * 15 / 2  # the 16^3, 12 mm preprocessing grid, centred on the origin


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


@pytest.fixture(scope="module")
def cohort_with_identity(tmp_path_factory) -> Path:
    """A small demo cohort whose first CN scan carries a name in its header's free text."""
    root = tmp_path_factory.mktemp("cohort")
    make_demo_cohort(root, n_control=5, n_ad=3, shape=(16, 16, 16), seed=3)
    first = root / "CN" / "CN_000.nii.gz"
    image = nib.load(first)
    image.header["descrip"] = b"Jane Doe 1950-01-01"
    nib.save(image, first)
    return root


@pytest.fixture(scope="module")
def balanced(cohort_with_identity, config, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "balanced"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["augment", str(cohort_with_identity), "--out", str(out), "--config", str(config)]) == 0
    return out, printed.getvalue()


def test_real_and_synthetic_scans_share_one_grid_and_intensity_range(balanced, cohort_with_identity):
    out, _ = balanced
    rows = _rows(out / "manifest.csv")
    assert [c for c in rows[0]] == ["path", "label", "split", "synthetic", "source_path"]
    real = [r for r in rows if r["synthetic"] == "false"]
    synthetic = [r for r in rows if r["synthetic"] == "true"]
    assert len(real) == 8 and len(synthetic) == 2  # AD 3 -> 5, CN 5 -> 5
    for row in rows:
        path = Path(row["path"])
        assert not path.is_absolute() and (out / path).is_file(), row  # resolves inside the output
        image = nib.load(out / path)
        assert image.shape == (16, 16, 16)
        np.testing.assert_allclose(image.affine, GRID)  # same grid, affine and orientation
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        data = _volume(out / path)
        assert data.min() >= 0.0 and data.max() <= 1.0  # same intensity scale
        for field in ("descrip", "aux_file", "db_name", "intent_name"):
            assert bytes(image.header[field]).strip(b"\x00") == b"", (row, field)
    # Real rows say where they came from; the input scale (not 0-1) is gone from the output.
    sources = {Path(r["source_path"]) for r in real}
    assert sources == {p.resolve() for p in cohort_with_identity.glob("*/*.nii.gz")}
    assert _volume(cohort_with_identity / "CN" / "CN_000.nii.gz").max() > 1.5
    real_max = max(_volume(out / r["path"]).max() for r in real)
    assert real_max == pytest.approx(1.0)
    assert {r["split"] for r in synthetic} == {"train"}
    for sub in ("real", "synthetic", "report", "models"):
        assert (out / sub).is_dir()
    summary = (out / "report" / "summary.txt").read_text()
    # The default generator is one class-conditional model on every class's scans: the summary
    # lists the class's own and counts the others, which metrics.json lists.
    assert "shared class-conditional generator trained on these 8 scans of every class (3 of this class)" in summary
    assert "and the 5 train scans of the other classes (listed in report/metrics.json" in summary
    trained_on = json.loads((out / "report" / "metrics.json").read_text())["classes"]["AD"]["trained_on"]
    assert sorted(trained_on) == sorted(r["path"] for r in real)
    for r in real:
        assert (r["path"] in summary) == (r["label"] == "AD"), r


def test_near_copies_are_replaced_by_default_and_the_count_reported(balanced):
    out, printed = balanced
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    near = metrics["classes"]["AD"]["near_copies"]
    assert near["policy"] == "replace" and near["threshold"] > 0
    assert f"{near['replaced']} replaced by new draws, {near['left_out']} left out" in printed
    assert metrics["near_copies_replaced"] == near["replaced"]
    # The default generator alters real AD subjects (variations): recomputed from the delivered
    # files, none is a near-copy of another AD subject, and each moved at least 0.1 x the smallest
    # real-to-real distance from its own source, as the rule the summary states.
    rows = _rows(out / "manifest.csv")
    real = {r["path"]: _volume(out / r["path"]).ravel() for r in rows if r["label"] == "AD" and r["synthetic"] == "false"}
    paths = sorted(real)
    smallest = min(np.sqrt(np.mean((real[a] - real[b]) ** 2)) for a in paths for b in paths if a < b)
    assert near["threshold"] == pytest.approx(0.5 * smallest, rel=1e-4)
    for row in (r for r in rows if r["synthetic"] == "true"):
        scan = _volume(out / row["path"]).ravel()
        source = json.loads((out / row["path"].replace(".nii.gz", ".json")).read_text())["source"]
        distance = {p: float(np.sqrt(np.mean((scan - real[p]) ** 2))) for p in paths}
        assert distance[source] >= 0.1 * smallest - 1e-6, row
        assert all(d >= near["threshold"] - 1e-6 for p, d in distance.items() if p != source), row
    audit = metrics["classes"]["AD"]["memorisation"]
    assert audit["copy_threshold"] == pytest.approx(near["threshold"])
    # the final audit judges them by the same rule: near no AD subject but their own, and says how
    # near their own source they lie
    assert audit["nearest_excludes_own_source"] and audit["flagged"] == []
    assert audit["synthetic_to_source"]["min"] >= 0.1 * smallest - 1e-6
    summary = (out / "report" / "summary.txt").read_text()
    assert f"{near['replaced']} redrawn" in summary and "0 delivered scan(s) below the threshold" in summary
    assert "other than its own source" in summary and "distance to its own source median" in summary


def test_aggregate_draws_deliver_no_near_copy_at_all(cohort_with_identity, config, tmp_path):
    out = tmp_path / "aggregate"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["augment", str(cohort_with_identity), "--out", str(out), "--config", str(config),
                     "--generator", "aggregate"]) == 0
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    # new latents, not a subject altered: the final audit of what was delivered finds nothing below
    assert metrics["classes"]["AD"]["memorisation"]["flagged"] == []
    assert "final audit: 0 delivered scan(s) below" in (out / "report" / "summary.txt").read_text()


def test_the_report_gives_the_mean_final_acceptance_against_its_target(balanced):
    out, _ = balanced
    info = json.loads((out / "report" / "metrics.json").read_text())["classes"]["AD"]
    # The default generator is one shared model; its history is the one the AD scans came from.
    history = json.loads((out / "models" / "shared" / "config.json").read_text())["meta"]["history"]
    accepts = [r["accept"] for r in history if r["phase"] == 2]
    tail = accepts[-max(1, round(0.1 * len(accepts))):]
    assert info["final_accept"] == pytest.approx(sum(tail) / len(tail))
    assert info["last_epoch_accept"] == pytest.approx(accepts[-1])
    assert info["target_accept"] == pytest.approx(0.574)  # MALA's default target
    summary = (out / "report" / "summary.txt").read_text()
    assert f"mean acceptance {info['final_accept']:.3f} over the last 10% of its epochs (target 0.574)" in summary


def test_outputs_are_group_readable_under_the_umask(balanced):
    out, _ = balanced
    for path in [out, *out.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o040, (path, oct(mode))  # group read: no 0600 / 0700 from temp files
        if path.is_dir():
            assert mode & 0o010, (path, oct(mode))


def test_inspect_and_augment_read_an_output_manifest(balanced, config, tmp_path, capsys):
    out, _ = balanced
    assert main(["inspect", str(out / "manifest.csv"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == {"AD": 5, "CN": 5} and summary["quality"] == []
    assert any("2 row(s) are synthetic" in w for w in summary["warnings"])
    again = tmp_path / "again"
    assert main(["augment", str(out / "manifest.csv"), "--out", str(again), "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "balanced cohort: AD 3 -> 5, CN 5 -> 5" in printed  # synthetic rows do not train or count
    rows = _rows(again / "manifest.csv")
    # The original inputs stay named: source_path is carried over from the first output.
    first = {r["path"]: r["source_path"] for r in _rows(out / "manifest.csv")}
    assert {r["source_path"] for r in rows if r["synthetic"] == "false"} == {
        v for v in first.values() if v}


def test_raw_real_copies_the_inputs_and_stays_self_contained(cohort_with_identity, config, tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["augment", str(cohort_with_identity), "--out", str(out), "--config", str(config),
                 "--raw-real", "--keep-near-copies"]) == 0
    assert "near-copies kept (--keep-near-copies)" in capsys.readouterr().out
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["real_scans"] == "raw" and metrics["classes"]["AD"]["near_copies"]["policy"] == "keep"
    for row in _rows(out / "manifest.csv"):
        assert (out / row["path"]).is_file()
        if row["synthetic"] == "false":
            assert (out / row["path"]).read_bytes() == Path(row["source_path"]).read_bytes()


def _flipped(src: Path, dst: Path) -> None:
    """The scan upside down: an intensity pattern no upright training scan has."""
    image = nib.load(src)
    write_scan(dst, np.asarray(image.dataobj)[:, :, ::-1], image.affine)


@pytest.fixture(scope="module")
def split_cohort(tmp_path_factory) -> Path:
    """Train: CN 5 and AD 3 upright scans. Test: AD 3 upside down, CN 1. Val: CN 1."""
    root = tmp_path_factory.mktemp("split")
    make_demo_cohort(root / "scans", n_control=7, n_ad=6, shape=(16, 16, 16), seed=5)
    lines = ["path,label,split"]
    for i in range(7):
        split = "train" if i < 5 else ("test" if i == 5 else "val")
        lines.append(f"scans/CN/CN_{i:03d}.nii.gz,CN,{split}")
    for i in range(6):
        name = f"scans/AD/AD_{i:03d}.nii.gz"
        if i >= 3:
            _flipped(root / name, root / "scans" / "AD" / f"AD_{i:03d}_flipped.nii.gz")
            name = f"scans/AD/AD_{i:03d}_flipped.nii.gz"
        lines.append(f"{name},AD,{'train' if i < 3 else 'test'}")
    (root / "cohort.csv").write_text("\n".join(lines) + "\n")
    return root


def _nearest_real_rows(out: Path) -> list[dict[str, str]]:
    """For each synthetic scan, the real row (any split) nearest to it."""
    rows = _rows(out / "manifest.csv")
    real = [r for r in rows if r["synthetic"] == "false"]
    real_x = np.stack([_volume(out / r["path"]).ravel() for r in real])
    nearest = []
    for r in rows:
        if r["synthetic"] == "true":
            d = np.linalg.norm(real_x - _volume(out / r["path"]).ravel(), axis=1)
            nearest.append(real[int(np.argmin(d))])
    return nearest


def test_with_a_split_column_test_scans_are_never_seen(split_cohort, config, tmp_path, capsys):
    out = tmp_path / "split"
    # Enough training that a generator which saw the flipped scans would reproduce them.
    target = ["--target", "AD=8", "--pretrain-steps", "200", "--mcmc-steps", "10"]
    assert main(["augment", str(split_cohort / "cohort.csv"), "--out", str(out), "--config", str(config),
                 *target]) == 0
    printed = capsys.readouterr().out
    assert "counted on the train split" in printed
    assert "generator trained on 8 scans of every class (3 of this class)" in printed
    rows = _rows(out / "manifest.csv")
    assert {r["split"] for r in rows if r["synthetic"] == "true"} == {"train"}
    assert sorted((r["label"], r["split"]) for r in rows if r["synthetic"] == "false").count(("AD", "test")) == 3
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    trained_on = metrics["classes"]["AD"]["trained_on"]
    test_paths = [r["path"] for r in rows if r["split"] == "test"]
    assert len(trained_on) == 8 and not set(trained_on) & set(test_paths)  # train CN 5 + AD 3
    # Test scans are preprocessed into the output like the rest, yet no synthetic scan is
    # nearest to one: the upside-down pattern only they have never reached a generator.
    nearest = _nearest_real_rows(out)
    assert len(nearest) == 8 and all(r["split"] == "train" for r in nearest), nearest

    # The check can fail: the same cohort without its split column trains on the flipped scans,
    # and then some synthetic scan is nearest to one of them.
    leaky = split_cohort / "no_split.csv"
    leaky.write_text("\n".join(line.rsplit(",", 1)[0] for line in
                               (split_cohort / "cohort.csv").read_text().splitlines()) + "\n")
    out2 = tmp_path / "leaky"
    assert main(["augment", str(leaky), "--out", str(out2), "--config", str(config), *target]) == 0
    leaked = sum("flipped" in r["source_path"] for r in _nearest_real_rows(out2))
    assert leaked > 0


def test_a_row_without_a_split_among_split_rows_is_refused(split_cohort, config, tmp_path, capsys):
    bad = split_cohort / "partial.csv"
    lines = (split_cohort / "cohort.csv").read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ","
    bad.write_text("\n".join(lines) + "\n")
    _fails_with(capsys, ["augment", str(bad), "--out", str(tmp_path / "o"), "--config", str(config)],
                "have no split")
    assert not (tmp_path / "o").exists()


# -- quality control: each refusal is one line naming the file and the reason; nothing written --
def _all_zero(path: Path) -> None:
    write_scan(path, np.zeros((16, 16, 16), np.float32), np.diag([12.0, 12.0, 12.0, 1.0]))


def _one_voxel(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.full((1, 1, 1), 5.0, np.float32), np.eye(4)), path)


def _object_in_noise(path: Path) -> None:
    data = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32) * 0.01
    data[30:34, 30:34, 30:34] = 100.0  # a 12 mm object in a 192 mm field of noise
    write_scan(path, data, np.diag([3.0, 3.0, 3.0, 1.0]))


def _small_head(path: Path) -> None:
    """A 42 mm object filling a third of a 60 mm field: fine as read, a few voxels of the grid."""
    data = np.zeros((20, 20, 20), np.float32)
    data[3:17, 3:17, 3:17] = 50.0 + np.random.default_rng(1).random((14, 14, 14))
    write_scan(path, data, np.diag([3.0, 3.0, 3.0, 1.0]))


def _narrow_dicom(path: Path) -> None:
    """A 20 mm field-of-view series, files without an extension (as scanners write them)."""
    volume = 100 + 50 * np.random.default_rng(2).random((20, 20, 10))
    write_dicom_series(path, volume, spacing=(1.0, 1.0, 2.0))
    for f in path.glob("*.dcm"):
        f.rename(f.with_suffix(""))


QC_CASES = {
    "zeros.nii.gz": (_all_zero, "constant intensity"),
    "one_voxel.nii": (_one_voxel, "constant intensity"),
    "speck.nii.gz": (_object_in_noise, "nearly empty"),
    "small_head.nii.gz": (_small_head, "nearly empty after preprocessing"),
    "localiser": (_narrow_dicom, "field of view 20 mm"),
}


@pytest.mark.parametrize("name", sorted(QC_CASES))
def test_quality_control_refuses_junk_scans_and_inspect_warns(name, cohort_with_identity, config, tmp_path,
                                                              capsys):
    make, reason = QC_CASES[name]
    root = tmp_path / "cohort"
    shutil.copytree(cohort_with_identity, root)
    make(root / "AD" / name)
    out = tmp_path / "out"
    line = _fails_with(capsys, ["augment", str(root), "--out", str(out), "--config", str(config)], name, reason)
    assert str(root / "AD" / name) in line
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    # inspect warns about the same scan (its default grid, 32 x 6 mm, is 192 mm like the
    # config's 16 x 12 mm), and does not fail.
    assert main(["inspect", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [q["path"] for q in summary["quality"]] == [f"AD/{name}"], summary["quality"]
    assert any(f"AD/{name}: " in w and "augment would refuse it" in w for w in summary["warnings"])


def test_nan_background_is_refused_unless_nan_to_zero(cohort_with_identity, config, tmp_path, capsys):
    root = tmp_path / "cohort"
    shutil.copytree(cohort_with_identity, root)
    scan = root / "AD" / "AD_000.nii.gz"
    data = _volume(scan)
    data[data < np.percentile(data, 30)] = np.nan  # a pipeline that writes NaN outside the head
    write_scan_nan(scan, data)
    _fails_with(capsys, ["augment", str(root), "--out", str(tmp_path / "o1"), "--config", str(config)],
                "AD_000.nii.gz", "NaN", "--nan-to-zero")
    assert main(["augment", str(root), "--out", str(tmp_path / "o2"), "--config", str(config),
                 "--nan-to-zero"]) == 0
    real = tmp_path / "o2" / "real" / "AD" / "AD_000.nii.gz"
    assert np.isfinite(_volume(real)).all()


def write_scan_nan(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([12.0, 12.0, 12.0, 1.0])), path)
