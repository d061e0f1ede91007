"""Where an ingest may read scans from: the rules that keep a lab inside its own upload.

An uploaded archive is untrusted: its ``manifest.csv`` could name ``/srv/.../artifacts/datasets/
<another lab's dataset>/data/...``, ``../../`` or a symlink pointing anywhere on the server, and
ingest would copy that file into the uploader's dataset. So every scan a cohort inside an
archive refers to must resolve (symlinks followed) inside that archive's folder. The gateway
checks this when the upload arrives (a 422 naming the row) and the worker again before it reads
a byte (a job can never read outside its archive, whoever submitted it).

Server paths (``source`` naming a folder, CSV or archive on the workers) are the operator's:
see ``check_server_path``. Torch-free: the gateway imports this module.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .params import InvalidParams

MANIFEST_NAME = "manifest.csv"  # as models.data.cohort: the manifest read at a cohort's top
OPERATOR = "local"  # the owner of jobs submitted by the CLI and the Python API (workers.submit)


# Decompression bombs, judged from an archive's headers before anything is inflated: scans
# deflate about 3-6:1 (MNI152 T1 at 1 mm, uncompressed .nii: 5.3:1), a run of zeros about 1000:1.
# Below RATIO_FLOOR unpacked bytes the ratio is not judged (a small manifest compresses well,
# and a bomb that small is harmless). The gateway's limit is MCVAE_MAX_COMPRESSION_RATIO.
MAX_COMPRESSION_RATIO = 100.0
RATIO_FLOOR = 1 << 20


def is_bomb(unpacked: int, packed: int, limit: float = MAX_COMPRESSION_RATIO) -> bool:
    return unpacked > RATIO_FLOOR and unpacked > limit * max(packed, 1)


class UnsafeSource(InvalidParams):
    """A cohort refers to something outside where it may read; the message names the row or file."""


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _manifest_paths(manifest: Path) -> list[tuple[int, str]]:
    """(row number, path cell) of each row, with the header rule of models.data.cohort: a first
    row naming 'path' and 'label' is a header; otherwise the path is the first column."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # unreadable: reading the cohort reports it, and reads nothing through it
    if not rows:
        return []
    first = [c.strip().lower() for c in rows[0]]
    column, start = (first.index("path"), 1) if "path" in first and "label" in first else (0, 0)
    return [(line, row[column].strip()) for line, row in enumerate(rows[start:], start=start + 1)
            if len(row) > column and row[column].strip()]


def confine(root: Path) -> None:
    """Refuse a cohort folder (an unpacked archive) that refers to anything outside itself:
    a symlink anywhere in it that resolves outside, or a manifest row that is absolute, climbs
    out with '..' or passes through such a link. ``UnsafeSource`` names the row or member."""
    root = Path(root)
    for folder, dirs, files in os.walk(root):  # never follows links: each one is judged here
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink() and not _inside(entry, root):
                relative = entry.relative_to(root).as_posix()
                raise UnsafeSource(f"source: {relative!r} is a link to outside the archive; "
                                   "an upload may only refer to its own files")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        return
    for line, cell in _manifest_paths(manifest):
        path = Path(cell)
        if path.is_absolute() or ".." in path.parts or not _inside(root / path, root):
            raise UnsafeSource(f"{MANIFEST_NAME}, row {line}: path {cell[:200]!r} is outside the archive; "
                               "paths in an uploaded manifest must be relative to it and stay inside")


def confine_items(paths, root: Path) -> None:
    """After listing: every path about to be read lies inside ``root`` (belt and braces for
    ``confine``: whatever the manifest parser made of a row, nothing outside is opened)."""
    for path in paths:
        if not _inside(Path(path), root):
            raise UnsafeSource(f"source: scan {Path(path).name!r} is outside the archive")


def protected_root(settings) -> Path:
    """The folder no server-path source may read from: the artifact store, which holds every
    lab's uploads, datasets, models and outputs (the rest of the data folder holds no scans)."""
    return settings.artifacts.expanduser().resolve()


def check_server_path(path: Path, settings, owner: str | None) -> None:
    """A server path is an operator's option (MCVAE_ALLOW_PATH_SOURCES). It is refused for a job
    that belongs to a lab (owner other than the operator's 'local'), so no lab can name one
    however many labs the deployment serves, and refused inside the artifact store whoever asks."""
    if not settings.allow_path_sources:
        raise InvalidParams("source: paths on the workers are not accepted (MCVAE_ALLOW_PATH_SOURCES=false)")
    if owner is not None and owner != OPERATOR:
        raise InvalidParams("source: a lab may ingest only its own uploads, not paths on the workers")
    if Path(path).expanduser().resolve().is_relative_to(protected_root(settings)):
        raise UnsafeSource("source: paths inside the artifact store are not accepted "
                           "(upload the cohort instead)")


def check_server_items(paths, settings) -> None:
    """Every scan a server-path cohort lists (a CSV may name any path) stays out of the store."""
    root = protected_root(settings)
    for path in paths:
        if Path(path).resolve().is_relative_to(root):
            raise UnsafeSource(f"source: scan {Path(path).name!r} lies inside the artifact store; "
                               "only uploads are read from there")
