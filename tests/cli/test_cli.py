"""The mcvae command line, end to end on real files: outputs read back with nibabel and MONAI."""

from __future__ import annotations

import csv
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from PIL import Image

from mcvae_cli.main import main
from models.data import make_demo_cohort, make_demo_slices

TINY = """
preprocess: {spatial_dims: 3, target_shape: [16, 16, 16], target_spacing: 12.0}
model: {channels: [4, 8], latent_dims: [4]}
sampler: {kind: mala, n_steps: 2}
train: {batch_size: 4}
pretrain_steps: 12
check_steps: 10
mcmc_steps: 4
"""
TINY_2D = TINY.replace("{spatial_dims: 3, target_shape: [16, 16, 16], target_spacing: 12.0}",
                       "{spatial_dims: 2, target_shape: [16, 16]}")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    make_demo_cohort(root, n_control=6, n_ad=3, shape=(16, 16, 16), seed=1)
    return root


@pytest.fixture()
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


PROGRESS_LINE = re.compile(r"^[\w -]+: +\d+% .* \(\d+ s\)$")


def _fails_with(capsys, argv, *words) -> str:
    code = main(argv)
    # Progress lines (stderr is not a terminal here) may come first; the error is one line.
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("mcvae: error: "), err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def test_augment_balances_a_3d_cohort_with_readable_outputs(cohort, tiny_config, tmp_path, capsys):
    out = tmp_path / "balanced"
    assert main(["augment", str(cohort), "--out", str(out), "--config", str(tiny_config)]) == 0
    printed = capsys.readouterr().out
    assert "balanced cohort: AD 3 -> 6, CN 6 -> 6" in printed
    # 12 steps teach the model the class mean only: the user is told, in one line
    assert "warning: class 'AD': the model reconstructs its training scans nearly alike" in printed

    rows = list(csv.DictReader((out / "manifest.csv").open()))
    counts = {}
    for row in rows:
        counts[(row["label"], row["synthetic"])] = counts.get((row["label"], row["synthetic"]), 0) + 1
    assert counts == {("CN", "false"): 6, ("AD", "false"): 3, ("AD", "true"): 3}

    synthetic = sorted((out / "synthetic" / "AD").glob("*.nii.gz"))
    assert len(synthetic) == 3
    expected_affine = np.diag([12.0, 12.0, 12.0, 1.0])
    expected_affine[:3, 3] = -12.0 * 15 / 2
    loader = LoadImage(image_only=True)
    for path in synthetic:
        img = nib.load(path)
        assert img.shape == (16, 16, 16) and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, expected_affine)
        assert np.isfinite(img.get_fdata()).all()
        for field in ("descrip", "aux_file", "db_name", "intent_name"):
            assert bytes(img.header[field]).strip(b"\x00") == b""
        monai_img = loader(str(path))
        assert tuple(monai_img.shape) == (16, 16, 16)
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["synthetic"] is True and sidecar["class"] == "AD" and sidecar["sampler"].startswith("mala")
        assert sidecar["latent_source"] == "aggregate"
    report = out / "report"
    for name in ("montage_AD.png", "curves_AD.png", "metrics.json"):
        assert (report / name).stat().st_size > 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["final_counts"] == {"AD": 6, "CN": 6}
    assert "flagged" in metrics["classes"]["AD"]["memorisation"]
    # variations are the default: each sidecar names the real AD subject it alters and the CN pair
    # whose difference moved it, and no other subject's detail is added (fine_detail off)
    assert metrics["classes"]["AD"]["generator"]["kind"] == "variation"
    assert metrics["classes"]["AD"]["near_copies"]["fine_detail"] == "none"
    real_ad = {r["path"] for r in rows if r["label"] == "AD" and r["synthetic"] == "false"}
    real_cn = {r["path"] for r in rows if r["label"] == "CN" and r["synthetic"] == "false"}
    for path in synthetic:
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["generator"] == "variation" and sidecar["derived_from_real_subject"] is True
        assert sidecar["source"] in real_ad and set(sidecar["variation_from"]) <= real_cn
    assert "generator variation" in (report / "summary.txt").read_text()
    assert (out / "models" / "shared" / "weights.safetensors").is_file()  # the default: one model
    assert not (out / "models" / "AD").exists()
    assert not list(tmp_path.glob(".balanced.partial-*")), "staging folder left behind"


def test_train_then_sample_writes_scans_in_target_space(cohort, tiny_config, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert main(["train", str(cohort), "--class", "AD", "--out", str(model_dir), "--config", str(tiny_config)]) == 0
    assert (model_dir / "curves.png").is_file()
    assert main(["sample", str(model_dir), "-n", "3", "--out", str(tmp_path / "s"), "--seed", "5"]) == 0
    first = sorted((tmp_path / "s").glob("*.nii.gz"))
    assert len(first) == 3 and nib.load(first[0]).shape == (16, 16, 16)
    assert main(["sample", str(model_dir), "-n", "3", "--out", str(tmp_path / "t"), "--seed", "5"]) == 0
    again = sorted((tmp_path / "t").glob("*.nii.gz"))
    assert np.array_equal(nib.load(first[1]).get_fdata(), nib.load(again[1]).get_fdata())
    capsys.readouterr()  # the samples' own lines (a blur warning among them)
    _fails_with(capsys, ["sample", str(model_dir), "-n", str(10**9), "--out", str(tmp_path / "u")], "-n", "10000")
    assert not (tmp_path / "u").exists()


def test_sample_measures_its_sharpness_against_the_training_scans_and_warns_of_blur(cohort, tiny_config, tmp_path,
                                                                                    capsys):
    """A sample has no real scans: the model keeps its training scans' gradient energy (one number
    per class), and sample reports its draws against it, warning when they are a blur tell."""
    from models.checks import SHARPNESS_BAND, TRAIN_GRADIENT_ENERGY
    from models.report import gradient_energy

    model_dir = tmp_path / "model"
    assert main(["train", str(cohort), "--class", "AD", "--out", str(model_dir), "--config", str(tiny_config)]) == 0
    meta = json.loads((model_dir / "config.json").read_text())["meta"]
    assert set(meta[TRAIN_GRADIENT_ENERGY]) == {"AD"} and meta[TRAIN_GRADIENT_ENERGY]["AD"] > 0
    capsys.readouterr()
    assert main(["sample", str(model_dir), "-n", "4", "--out", str(tmp_path / "s"), "--seed", "3"]) == 0
    captured = capsys.readouterr()
    drawn = np.stack([nib.load(p).get_fdata(dtype=np.float32) for p in sorted((tmp_path / "s").glob("*.nii.gz"))])
    ratio = gradient_energy(torch.from_numpy(drawn)[:, None]) / meta[TRAIN_GRADIENT_ENERGY]["AD"]
    said = float(re.search(r"gradient energy ([\d.]+) x the training scans'", captured.out).group(1))
    assert said == pytest.approx(ratio, abs=0.006)  # two decimals, read back from the written files
    # a 12-step model's decoder means are smoother than the noisy scans it learned from
    assert ratio < SHARPNESS_BAND[0]
    assert "warning: class 'AD': the sampled scans' gradient energy" in captured.err
    assert "smoother" in captured.err and "generator variation" in captured.err


def test_model_scope_flag_overrides_the_file_and_sample_draws_a_named_class(cohort, tiny_config, tmp_path, capsys):
    config = tmp_path / "per_class.yaml"
    config.write_text(tiny_config.read_text() + "model_scope: per_class\n")
    out = tmp_path / "balanced"
    assert main(["augment", str(cohort), "--out", str(out), "--config", str(config),
                 "--model-scope", "shared"]) == 0
    capsys.readouterr()
    shared = out / "models" / "shared"
    assert (shared / "weights.safetensors").is_file() and not (out / "models" / "AD").exists()
    assert json.loads((out / "report" / "metrics.json").read_text())["classes"]["AD"]["model_scope"] == "shared"

    assert main(["sample", str(shared), "-n", "3", "--class", "AD", "--out", str(tmp_path / "ad")]) == 0
    assert "wrote 3 scans of class 'AD'" in capsys.readouterr().out
    scans = sorted((tmp_path / "ad").glob("syn_AD_*.nii.gz"))
    assert len(scans) == 3 and nib.load(scans[0]).shape == (16, 16, 16)
    assert json.loads(scans[0].with_name("syn_AD_00000.json").read_text())["class"] == "AD"
    assert main(["sample", str(shared), "-n", "3", "--class", "CN", "--out", str(tmp_path / "cn")]) == 0
    ad, cn = nib.load(scans[0]).get_fdata(), nib.load(tmp_path / "cn" / "syn_CN_00000.nii.gz").get_fdata()
    assert not np.allclose(ad, cn)  # same seed, another class: another scan
    capsys.readouterr()

    _fails_with(capsys, ["sample", str(shared), "-n", "2", "--out", str(tmp_path / "x")],
                "--class", "class-conditional", "classes: AD, CN")
    _fails_with(capsys, ["sample", str(shared), "-n", "2", "--class", "MCI", "--out", str(tmp_path / "y")],
                "no class 'MCI'", "classes: AD, CN")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_sample_class_of_a_per_class_model_is_optional_but_must_match(cohort, tiny_config, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert main(["train", str(cohort), "--class", "AD", "--out", str(model_dir), "--config", str(tiny_config)]) == 0
    assert main(["sample", str(model_dir), "-n", "2", "--class", "AD", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("syn_AD_*.nii.gz"))) == 2
    capsys.readouterr()
    _fails_with(capsys, ["sample", str(model_dir), "-n", "2", "--class", "CN", "--out", str(tmp_path / "t")],
                "trained on class 'AD' only", "'CN'")


def test_model_scope_flag_takes_only_the_config_scopes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["augment", "somewhere", "--out", "x", "--model-scope", "global"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and all(s in err for s in ("per_class", "transfer", "shared"))


def test_augment_takes_a_2d_png_cohort(tmp_path, capsys):
    make_demo_slices(tmp_path / "slices", n_control=5, n_ad=2, shape=(32, 32), seed=0)
    config = tmp_path / "tiny2d.yaml"
    config.write_text("generator: aggregate\n" + TINY_2D)  # the PNG format is the subject here
    out = tmp_path / "out"
    assert main(["augment", str(tmp_path / "slices"), "--out", str(out), "--config", str(config)]) == 0
    # PNG in, PNG out (issue 25); the given target_shape resizes the 32 x 32 slices to 16 x 16
    scans = sorted((out / "synthetic" / "AD").glob("*.png"))
    assert len(scans) == 3 and np.asarray(Image.open(scans[0])).shape == (16, 16)
    assert Image.open(scans[0]).mode == "L" and not list((out / "synthetic").rglob("*.nii.gz"))


def test_inspect_and_demo_cohort(tmp_path, capsys):
    assert main(["demo-cohort", str(tmp_path / "c"), "--n-control", "3", "--n-ad", "2", "--size", "16"]) == 0
    assert main(["inspect", str(tmp_path / "c"), "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["classes"] == {"AD": 2, "CN": 3} and summary["spatial_dims"] == 3


def _cohort_with(tmp_path: Path, cohort: Path, bad_name: str, write) -> Path:
    """A copy of the small cohort with one bad AD scan added."""
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(cohort, root)
    write(root / "AD" / bad_name)
    return root


def _good_bytes(cohort: Path) -> bytes:
    return min((cohort / "AD").glob("*.nii.gz")).read_bytes()


@pytest.mark.parametrize(
    "name,write,problem",
    [
        ("trunc.nii.gz", lambda p, good: p.write_bytes(good[: len(good) // 2]), ""),
        ("text.nii", lambda p, good: p.write_text("not an image at all\n" * 20), ""),
        ("empty.nii.gz", lambda p, good: p.write_bytes(b""), "empty"),
        ("four_d.nii.gz", lambda p, good: nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), p), "4-D"),
        ("nan.nii.gz", lambda p, good: write_nan(p), "NaN"),
    ],
    ids=["truncated", "not-an-image", "zero-size", "4d", "nan"],
)
def test_bad_scans_fail_with_one_line_naming_the_file(cohort, tiny_config, tmp_path, capsys, name, write, problem):
    good = _good_bytes(cohort)
    root = _cohort_with(tmp_path, cohort, name, lambda p: write(p, good))
    out = tmp_path / "out"
    line = _fails_with(capsys, ["augment", str(root), "--out", str(out), "--config", str(tiny_config)], name, problem)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*")), line


def write_nan(path: Path) -> None:
    data = np.ones((8, 8, 8), np.float32)
    data[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def test_cohort_level_errors(cohort, tiny_config, tmp_path, capsys):
    import shutil

    one_class = tmp_path / "one"
    shutil.copytree(cohort / "CN", one_class / "CN")
    _fails_with(capsys, ["augment", str(one_class), "--out", str(tmp_path / "o1"), "--config", str(tiny_config)],
                "one class")
    _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "o2"), "--target", "MCI=4",
                         "--config", str(tiny_config)], "unknown class", "MCI")
    _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "o3"), "--target", f"AD={10**9}",
                         "--config", str(tiny_config)], "exceeds the limit")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"path,label\n{min((cohort / 'CN').iterdir())},CN\nmissing/scan.nii.gz,AD\n")
    _fails_with(capsys, ["augment", str(manifest), "--out", str(tmp_path / "o4"), "--config", str(tiny_config)],
                "missing/scan.nii.gz")
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("sampler: {kind: gibbs}\n")
    _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "o5"), "--config", str(bad_config)],
                "sampler.kind")
    for n in range(1, 6):
        assert not (tmp_path / f"o{n}").exists()


def test_console_script_exits_non_zero_with_one_line(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"garbage" * 10))
    proc = subprocess.run([sys.executable, "-m", "mcvae_cli.main", "inspect", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "mcvae: error:" in proc.stderr


def test_demo_builds_and_balances_the_embedded_cohort(tmp_path, tiny_config, capsys):
    """`mcvae demo`, small: the full-size run is timed by bench/demo_time.py."""
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n-control", "4", "--n-ad", "2", "--size", "16",
            "--config", str(tiny_config)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "balanced cohort: AD 2 -> 4, CN 4 -> 4" in printed and str(out / "balanced") in printed
    assert len(list((out / "cohort" / "CN").glob("*.nii.gz"))) == 4
    assert len(list((out / "balanced" / "synthetic" / "AD").glob("*.nii.gz"))) == 2
    # the demo runs the utility self-check: k-fold on the train split, said in plain words
    utility = json.loads((out / "balanced" / "report" / "metrics.json").read_text())["classes"]["AD"]["utility"]
    assert utility["folds"] == 2 and len(utility["with_synthetic"]) == 2
    assert "synthetic scans helped" in printed or "did not" in printed
    summary = (out / "balanced" / "report" / "summary.txt").read_text()
    assert ("utility self-check: class 'AD': the synthetic scans helped" in summary
            or "WARNING: class 'AD': the synthetic scans did not" in summary)
    _fails_with(capsys, argv, "exists already")


def test_augment_generator_flags_make_counterfactuals(cohort, tiny_config, tmp_path, capsys):
    out = tmp_path / "cf"
    assert main(["augment", str(cohort), "--out", str(out), "--config", str(tiny_config), "--target", "AD=2",
                 "--generator", "counterfactual", "--abduction", "mean", "--no-check-utility"]) == 0
    printed = capsys.readouterr().out
    assert "fidelity gate" in printed
    sidecars = [json.loads(p.read_text()) for p in sorted((out / "synthetic" / "AD").glob("*.json"))]
    assert len(sidecars) == 2 and all(s["generator"] == "counterfactual" for s in sidecars)
    assert all(s["source"].startswith("real/CN/") and (out / s["source"]).is_file() for s in sidecars)
    metrics = json.loads((out / "report" / "metrics.json").read_text())["classes"]["AD"]
    assert "utility" not in metrics and metrics["generator"]["abduction"] == "mean"
    _fails_with(capsys, ["augment", str(cohort), "--out", str(tmp_path / "x"), "--config", str(tiny_config),
                         "--generator", "interpolation", "--model-scope", "per_class"],
                "generator: interpolation needs model_scope shared")


def _scan_bytes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


def test_demo_cohort_difficulty_flag(tmp_path, capsys):
    argv = ["--n-control", "2", "--n-ad", "1", "--size", "16", "--seed", "5"]
    assert main(["demo-cohort", str(tmp_path / "easy"), *argv]) == 0
    assert main(["demo-cohort", str(tmp_path / "zero"), *argv, "--difficulty", "0"]) == 0
    assert main(["demo-cohort", str(tmp_path / "hard"), *argv, "--difficulty", "1"]) == 0
    make_demo_cohort(tmp_path / "lib", n_control=2, n_ad=1, shape=(16, 16, 16), seed=5, difficulty=1.0)
    easy, hard = _scan_bytes(tmp_path / "easy"), _scan_bytes(tmp_path / "hard")
    assert len(easy) == 3 and _scan_bytes(tmp_path / "zero") == easy  # the default is difficulty 0
    assert hard == _scan_bytes(tmp_path / "lib")  # the flag reaches make_demo_cohort
    assert all(hard[k] != easy[k] for k in easy)
    assert main(["demo-cohort", str(tmp_path / "s"), "--slices", "--n-control", "1", "--n-ad", "1",
                 "--difficulty", "0.5"]) == 0
    assert len(list((tmp_path / "s").rglob("*.png"))) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["demo-cohort", "--help"])
    assert "3 scanner sites" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("bad", ["-0.1", "1.5", "nan", "hard"])
def test_bad_difficulty_fails_with_one_line_before_writing(tmp_path, capsys, bad):
    _fails_with(capsys, ["demo-cohort", str(tmp_path / "c"), "--size", "16", "--difficulty", bad],
                "--difficulty", "0 (easy)", "1 (hard)", bad)
    _fails_with(capsys, ["demo", "--out", str(tmp_path / "d"), "--size", "16", "--difficulty", bad],
                "--difficulty", bad)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_demo_difficulty_flag_builds_the_hard_cohort(tmp_path, tiny_config, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-control", "4", "--n-ad", "2", "--size", "16",
                 "--difficulty", "1", "--config", str(tiny_config)]) == 0
    assert "balanced cohort: AD 2 -> 4, CN 4 -> 4" in capsys.readouterr().out
    make_demo_cohort(tmp_path / "lib", n_control=4, n_ad=2, shape=(16, 16, 16), seed=0, difficulty=1.0)
    assert _scan_bytes(out / "cohort") == _scan_bytes(tmp_path / "lib")
