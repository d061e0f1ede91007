"""A cohort: which scans, which class each belongs to, and (optionally) which split.

Read from a folder with one sub-folder per class, or from a CSV manifest ``path,label[,split]``
(with a header, further columns are allowed: mcvae's own output manifests add ``synthetic`` and
``source_path``, which are read; others are ignored and noted). Reading lists files only;
``summarize`` (models/data/summary.py) opens every scan (and so validates it).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CohortError
from .io import scan_format

MANIFEST_NAME = "manifest.csv"


COLUMNS = ("path", "label", "split")
# The values a split may take (any case; read as lower case). Anything else is refused: a typo
# (``tset``) would otherwise hold the row out of training without a word.
SPLITS = ("train", "val", "test")
# Columns of mcvae's output manifests that mean something when read back.
KNOWN_EXTRA_COLUMNS = ("synthetic", "source_path")


@dataclass(frozen=True)
class CohortItem:
    path: Path
    label: str
    split: str | None = None
    synthetic: bool = False  # a row of an mcvae output that the tool generated
    source_path: str | None = None  # where a preprocessed real scan of an mcvae output came from


@dataclass
class Cohort:
    items: list[CohortItem]
    source: Path | None = None
    # Things noticed while listing (ignored files, empty class folders); summarize() repeats them.
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    @property
    def classes(self) -> list[str]:
        return sorted({item.label for item in self.items})

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(item.label for item in self.items)
        return {label: counts[label] for label in self.classes}

    @property
    def spatial_dims(self) -> int:
        """2 for PNG/JPEG slices, 3 for volumes (read_cohort refuses a mix)."""
        return _spatial_dims(self.items, self.source)

    def of_class(self, label: str) -> Cohort:
        return Cohort([i for i in self.items if i.label == label], self.source, list(self.notes))


def read_cohort(source: str | Path) -> Cohort:
    """List a cohort from a class-per-folder tree or a CSV manifest.

    A folder that holds ``manifest.csv`` at its top is read through that manifest. In a class
    folder every scan file is one scan, and every sub-folder holding ``.dcm`` files is one DICOM
    series. Hidden files and folders are skipped; files of unknown type are skipped and noted.
    One class only is not an error here: whether that is usable is for the caller to decide.
    """
    source = Path(source)
    if not source.exists():
        raise CohortError(f"{source}: no such file or folder")
    if source.is_file():
        cohort = _read_manifest(source)
    elif (source / MANIFEST_NAME).is_file():
        cohort = _read_manifest(source / MANIFEST_NAME)
    else:
        cohort = _read_folder(source)
    if not cohort.items:
        raise CohortError(
            f"{source}: no scans found (expected class sub-folders holding .nii, .nii.gz, .mgz, "
            ".png, .jpg files or DICOM series folders, or a CSV manifest path,label[,split])"
        )
    _spatial_dims(cohort.items, source)  # refuse a mix of 2-D slices and volumes now
    return cohort


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "__MACOSX"))


def _read_folder(root: Path) -> Cohort:
    items: list[CohortItem] = []
    notes: list[str] = []
    loose = [p.name for p in sorted(root.iterdir()) if _visible(p) and p.is_file()]
    if loose:
        notes.append(f"ignored {len(loose)} file(s) outside class folders: {', '.join(loose[:5])}")
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        found, ignored = [], []
        for entry in sorted(p for p in class_dir.iterdir() if _visible(p)):
            fmt = scan_format(entry)
            if fmt is None:
                ignored.append(entry.name)
            elif fmt == "dicom" and entry.is_file():
                # Loose .dcm files in a class folder are slices of one series, not scans each.
                ignored.append(entry.name)
            else:
                found.append(CohortItem(entry, class_dir.name))
        if ignored:
            notes.append(
                f"class '{class_dir.name}': ignored {len(ignored)} entr(y/ies) that are not scans "
                f"(DICOM slices belong in one sub-folder per series): {', '.join(ignored[:5])}"
            )
        if not found:
            notes.append(f"class folder '{class_dir.name}' holds no scans")
        items.extend(found)
    return Cohort(items, root, notes)


def _read_manifest(manifest: Path) -> Cohort:
    base = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CohortError(f"{manifest}: unreadable CSV manifest ({exc})") from exc
    if not rows:
        raise CohortError(f"{manifest}: empty manifest; expected rows path,label[,split]")

    first = [c.strip().lower() for c in rows[0]]
    notes: list[str] = []
    if "path" in first and "label" in first:
        columns, start = first, 1
        ignored = [c for c in columns if c and c not in COLUMNS + KNOWN_EXTRA_COLUMNS]
        if ignored:
            notes.append(f"{manifest.name}: ignored column(s) {', '.join(ignored)}")
    elif _looks_like_header(first, base):
        raise CohortError(
            f"{manifest}: unknown columns {[c for c in rows[0]]}; expected a header with "
            "'path' and 'label' (and optionally 'split'), e.g. path,label,split")
    else:
        columns, start = ["path", "label", "split"][: max(2, len(first))], 0

    items: list[CohortItem] = []
    first_row_of: dict[Path, int] = {}
    for line, row in enumerate(rows[start:], start=start + 1):
        if not any(c.strip() for c in row):
            continue  # blank lines are harmless
        cells = dict(zip(columns, (c.strip() for c in row)))
        where = f"{manifest}, row {line}"
        if len(row) < 2 or not cells.get("path") or not cells.get("label"):
            raise CohortError(f"{where}: expected path,label[,split], got {row}")
        path = Path(cells["path"])
        resolved = path if path.is_absolute() else (base / path)
        if not resolved.exists():
            raise CohortError(f"{where}: scan '{cells['path']}' not found (looked at {resolved})")
        if scan_format(resolved) is None:
            raise CohortError(f"{where}: '{cells['path']}' is not a supported scan type")
        key = resolved.resolve()
        if key in first_row_of:
            raise CohortError(
                f"{where}: '{cells['path']}' is listed twice (also row {first_row_of[key]})"
            )
        first_row_of[key] = line
        synthetic = cells.get("synthetic", "").lower()
        if synthetic not in ("", "true", "false"):
            raise CohortError(f"{where}: synthetic must be true or false, got {cells['synthetic']!r}")
        split = cells.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            raise CohortError(f"{where}: unknown split value {cells['split']!r}; a split must be one of "
                              f"{', '.join(SPLITS)} (or left empty on every row)")
        items.append(CohortItem(resolved, cells["label"], split,
                                synthetic == "true", cells.get("source_path") or None))
    return Cohort(items, manifest, notes)


def _looks_like_header(cells: list[str], base: Path) -> bool:
    """A first row of names (``filename,diagnosis``) rather than a scan: its first cell names
    no file and no cell looks like a path."""
    if not cells or not cells[0]:
        return False
    path = Path(cells[0])
    exists = (path if path.is_absolute() else base / path).exists()
    return not exists and not any(("/" in c or "\\" in c or "." in c) for c in cells)


def _spatial_dims(items: list[CohortItem], source: Path | None) -> int:
    dims = {2 if scan_format(i.path) == "image" else 3 for i in items}
    if len(dims) > 1:
        raise CohortError(f"{source}: mixes 2-D slices (PNG/JPEG) with 3-D volumes; use one kind")
    return dims.pop() if dims else 3
