"""Job results as downloads: a zip streamed as it is built, or a single file.

The zip is written member by member into a small buffer that is handed to the client as it
fills, so a large augmentation never sits in memory or in a temporary file. Already-compressed
scans (.nii.gz, .png) are stored, the rest deflated. Left out: the models' weights (they are
resources of their own, under /v1/models) and raw sample arrays (the NIfTI files hold them).
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

from workers import ArtifactStore

STORED_SUFFIXES = (".gz", ".png", ".jpg", ".jpeg", ".zip", ".mgz")
SKIP_TOP = ("models",)
SKIP_NAMES = ("samples.npy",)


class _Sink(io.RawIOBase):
    """Where zipfile writes; drained after every block (no seek: zipfile uses data descriptors)."""

    def __init__(self) -> None:
        self.buffer, self.position = bytearray(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def drain(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def payload_files(folder: Path) -> list[tuple[Path, str]]:
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative.split("/", 1)[0] not in SKIP_TOP and path.name not in SKIP_NAMES:
            files.append((path, relative))
    return files


def public_manifest(path: Path, store: ArtifactStore) -> bytes:
    """The augmentation manifest with real scans named by their place in the dataset
    (``AD/sub-1.nii.gz``), not by the store's folder on the worker."""
    datasets = (store.root / "datasets").resolve()
    out = io.StringIO()
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames or [], lineterminator="\n")
        writer.writeheader()
        for row in reader:
            value = row.get("path") or ""
            if value.startswith("/"):
                p = Path(value)
                try:  # <root>/datasets/<id>/data/<label>/<file>
                    row["path"] = "/".join(p.resolve().relative_to(datasets).parts[2:])
                except ValueError:
                    row["path"] = p.name
            writer.writerow(row)
    return out.getvalue().encode()


def zip_stream(files: list[tuple[Path, str]], replace: dict[str, bytes] | None = None) -> Iterator[bytes]:
    """Yield a zip of ``files`` (path, name in the zip) chunk by chunk; ``replace`` gives some
    members new content."""
    sink = _Sink()
    replace = replace or {}
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for path, name in files:
            method = zipfile.ZIP_STORED if name.lower().endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo.from_file(path, name)
            info.compress_type = method
            if name in replace:
                info.file_size = len(replace[name])
                with zf.open(info, "w") as member:
                    member.write(replace[name])
            else:
                big = info.file_size > 1 << 31
                with open(path, "rb") as src, zf.open(info, "w", force_zip64=big) as member:
                    while block := src.read(1 << 20):
                        member.write(block)
                        if len(sink.buffer) >= 1 << 20:
                            yield sink.drain()
            if sink.buffer:
                yield sink.drain()
    if sink.buffer:  # the central directory, written on close
        yield sink.drain()
