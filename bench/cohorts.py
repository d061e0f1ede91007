"""The data bench/ measures on: scikit-learn's digits, demo cohorts (``models.data.make_demo_cohort``) as tensors or as
an upload zip, held-out test sets, and the extra minority scans that need no generative model
(duplicates, classical augmentation)."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import torch

from models.data import PreprocessConfig, load_tensors, make_demo_cohort


def build_data(seed: int, root: Path, n_control: int, n_ad: int, n_test: int, pre: PreprocessConfig,
               difficulty: float = 0.0) -> dict[str, torch.Tensor]:
    """A demo training cohort (demo seed ``seed``) and a balanced held-out test cohort (demo seed
    1000 + seed, ``n_test`` scans per class), 32^3, preprocessed: keys train_CN, train_AD,
    test_CN, test_AD."""
    train = make_demo_cohort(root / "train", n_control=n_control, n_ad=n_ad, shape=(32, 32, 32), seed=seed,
                             difficulty=difficulty)
    test = make_demo_cohort(root / "test", n_control=n_test, n_ad=n_test, shape=(32, 32, 32), seed=1000 + seed,
                            difficulty=difficulty)
    out = {}
    for name, cohort in (("train", train), ("test", test)):
        for label in ("CN", "AD"):
            out[f"{name}_{label}"] = load_tensors(cohort, pre, root / "cache", label)
    return out


def classical_copies(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n randomly affine + elastically deformed copies of the scans in x (cycled)."""
    from monai.transforms import Compose, Rand3DElastic, RandAffine

    aug = Compose([
        RandAffine(prob=1.0, rotate_range=(math.radians(8),) * 3, scale_range=(0.05,) * 3,
                   translate_range=(2,) * 3, padding_mode="border", mode="bilinear"),
        Rand3DElastic(sigma_range=(4, 6), magnitude_range=(20, 40), prob=1.0,
                      padding_mode="border", mode="bilinear"),
    ])
    aug.set_random_state(seed=seed)
    return torch.stack([torch.as_tensor(aug(x[i % len(x)])).float() for i in range(n)]).clamp(0, 1)


def duplicate_copies(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n random duplicates of the scans in x (random oversampling), each scan once per cycle."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.randperm(len(x), generator=g) for _ in range(-(-n // len(x)))])[:n]
    return x[idx].clone()


def held_out(data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """build_data's held-out scans and labels (CN 0, AD 1)."""
    return labelled(data["test_CN"], data["test_AD"])


def labelled(majority: torch.Tensor, minority: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two classes' scans stacked, with labels 0 (majority) and 1 (minority)."""
    return (torch.cat([majority, minority]),
            torch.cat([torch.zeros(len(majority)), torch.ones(len(minority))]).long())


def digits_split() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits, binarised at 0.5, (N, 1, 8, 8): 1400 for training, 397 held out
    (one fixed shuffle)."""
    from sklearn.datasets import load_digits

    images, _ = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0 > 0.5, dtype=torch.float32).view(-1, 1, 8, 8)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order[:1400]], x[order[1400:]]


def cohort_zip(folder: Path, n_control: int, n_ad: int, size: int) -> bytes:
    """A demo cohort written to ``folder`` (demo seed 0) and zipped as the gateway takes an upload."""
    make_demo_cohort(folder, n_control=n_control, n_ad=n_ad, shape=(size,) * 3, seed=0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()
