"""Cohorts from class folders and CSV manifests, and their summaries."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from models.data import CohortError, ScanError, format_summary, read_cohort, summarize, write_scan

from .dicom_series import write_dicom_series


def scan(path, shape=(8, 8, 8), spacing=2.0, seed=0):
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return write_scan(path, data, np.diag([spacing] * 3 + [1.0]))


def test_class_folders_with_hidden_files_and_a_dicom_series(tmp_path):
    for i in range(3):
        scan(tmp_path / "CN" / f"cn{i}.nii.gz", seed=i)
    scan(tmp_path / "AD" / "ad0.nii")
    write_dicom_series(tmp_path / "AD" / "ad1_series", np.ones((8, 8, 8)) * 7)
    (tmp_path / "CN" / ".DS_Store").write_bytes(b"junk")
    scan(tmp_path / "CN" / ".hidden.nii.gz")
    (tmp_path / ".git").mkdir()
    scan(tmp_path / ".git" / "x.nii.gz")
    (tmp_path / "AD" / "notes.txt").write_text("referral letter")
    (tmp_path / "README.md").write_text("cohort")

    cohort = read_cohort(tmp_path)
    assert cohort.classes == ["AD", "CN"]
    assert cohort.counts == {"AD": 2, "CN": 3}
    assert cohort.spatial_dims == 3
    assert {i.path.name for i in cohort} == {"cn0.nii.gz", "cn1.nii.gz", "cn2.nii.gz", "ad0.nii",
                                             "ad1_series"}
    assert all(i.split is None for i in cohort)
    notes = " ".join(cohort.notes)
    assert "notes.txt" in notes and "README.md" in notes

    summary = summarize(cohort)
    assert summary["n_scans"] == 5 and summary["classes"] == {"AD": 2, "CN": 3}
    assert "mixed voxel spacings" in " ".join(summary["warnings"])  # DICOM is 1x1x2 mm
    assert summary["intensity"]["AD"]["max"] == 7.0


def test_manifest_with_relative_paths_and_splits(tmp_path):
    scan(tmp_path / "scans" / "a.nii.gz")
    scan(tmp_path / "scans" / "b.nii.gz", seed=1)
    scan(tmp_path / "c.nii.gz", seed=2)
    manifest = tmp_path / "lists" / "cohort.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,split\n../scans/a.nii.gz,CN,train\n"
                        "../scans/b.nii.gz,CN,test\n\n"
                        f"{tmp_path / 'c.nii.gz'},AD,\n")
    cohort = read_cohort(manifest)
    assert [(i.path.name, i.label, i.split) for i in cohort] == [
        ("a.nii.gz", "CN", "train"), ("b.nii.gz", "CN", "test"), ("c.nii.gz", "AD", None)]
    assert cohort.items[0].path == tmp_path / "lists" / ".." / "scans" / "a.nii.gz"
    assert summarize(cohort)["splits"] == {"train": 1, "test": 1}


def test_folder_with_manifest_is_read_through_it(tmp_path):
    scan(tmp_path / "x.nii.gz")
    scan(tmp_path / "y.nii.gz")
    (tmp_path / "manifest.csv").write_text("label,path\nAD,x.nii.gz\nCN,y.nii.gz\n")
    assert read_cohort(tmp_path).counts == {"AD": 1, "CN": 1}


def test_manifest_missing_path_names_row_and_path(tmp_path):
    scan(tmp_path / "a.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.nii.gz,CN\nmissing/b.nii.gz,AD\n")
    with pytest.raises(CohortError) as info:
        read_cohort(manifest)
    message = str(info.value)
    assert "row 3" in message and "missing/b.nii.gz" in message and "not found" in message
    assert str(manifest) in message


@pytest.mark.parametrize("text, problem", [
    ("", "empty manifest"),
    ("filename,diagnosis\na.nii.gz,CN\n", "unknown columns ['filename', 'diagnosis']"),
    ("path,label,synthetic\na.nii.gz,CN,maybe\n", "synthetic must be true or false"),
    ("path,label\na.nii.gz\n", "row 2: expected path,label"),
    ("path,label\na.nii.gz,CN\na.nii.gz,AD\n", "listed twice (also row 2)"),
    ("path,label\nnotes.txt,CN\n", "not a supported scan type"),
])
def test_bad_manifests(tmp_path, text, problem):
    scan(tmp_path / "a.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(CohortError, match=re.escape(problem)):
        read_cohort(tmp_path / "m.csv")


def test_extra_columns_of_an_output_manifest_are_read_and_others_noted(tmp_path):
    scan(tmp_path / "real" / "CN" / "a.nii.gz")
    scan(tmp_path / "synthetic" / "CN" / "syn_CN_00000.nii.gz", seed=1)
    (tmp_path / "m.csv").write_text("path,label,split,synthetic,source_path,site\n"
                                    "real/CN/a.nii.gz,CN,train,false,/data/in/a.nii,x\n"
                                    "synthetic/CN/syn_CN_00000.nii.gz,CN,train,true,,x\n")
    cohort = read_cohort(tmp_path / "m.csv")
    assert [(i.synthetic, i.source_path) for i in cohort] == [(False, "/data/in/a.nii"), (True, None)]
    assert "ignored column(s) site" in " ".join(cohort.notes)


def test_manifest_without_header(tmp_path):
    scan(tmp_path / "a.nii.gz")
    (tmp_path / "m.csv").write_text("a.nii.gz,AD,val\n")
    assert [(i.label, i.split) for i in read_cohort(tmp_path / "m.csv")] == [("AD", "val")]


def test_one_class_is_read_and_flagged_by_summary(tmp_path):
    scan(tmp_path / "AD" / "only.nii.gz")
    cohort = read_cohort(tmp_path)
    assert cohort.classes == ["AD"]
    summary = summarize(cohort)
    warnings = " ".join(summary["warnings"])
    assert "only one class" in warnings and "class 'AD' has 1 scan" in warnings
    text = format_summary(summary)
    assert "classes: AD 1" in text and "warning: only one class" in text


def test_empty_and_missing_sources(tmp_path):
    (tmp_path / "CN").mkdir()
    (tmp_path / "CN" / ".hidden.nii.gz").write_bytes(b"x")
    with pytest.raises(CohortError, match="no scans found"):
        read_cohort(tmp_path)
    with pytest.raises(CohortError, match="no such file"):
        read_cohort(tmp_path / "nope")


def test_mixing_slices_and_volumes_is_refused(tmp_path):
    scan(tmp_path / "CN" / "v.nii.gz")
    (tmp_path / "AD").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "AD" / "s.png")
    with pytest.raises(CohortError, match="mixes 2-D slices"):
        read_cohort(tmp_path)


def test_png_cohort_is_two_dimensional(tmp_path):
    for label, n in (("NonDemented", 3), ("MildDemented", 2)):
        (tmp_path / label).mkdir()
        for i in range(n):
            pixels = np.random.default_rng(i).integers(0, 255, (12, 10), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    cohort = read_cohort(tmp_path)
    assert cohort.spatial_dims == 2 and cohort.counts == {"MildDemented": 2, "NonDemented": 3}
    summary = summarize(cohort)
    assert summary["shapes"] == {"10x12": 5} and summary["spatial_dims"] == 2


def test_summary_flags_mixed_shapes_and_names_a_bad_scan(tmp_path):
    scan(tmp_path / "CN" / "a.nii.gz", shape=(8, 8, 8))
    scan(tmp_path / "CN" / "b.nii.gz", shape=(8, 8, 9))
    scan(tmp_path / "AD" / "c.nii.gz")
    scan(tmp_path / "AD" / "d.nii.gz")
    summary = summarize(read_cohort(tmp_path))
    assert any("mixed shapes" in w for w in summary["warnings"])
    assert summary["orientations"] == {"RAS": 4}

    bad = tmp_path / "AD" / "e.nii.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ScanError) as info:
        summarize(read_cohort(tmp_path))
    assert info.value.path == bad
